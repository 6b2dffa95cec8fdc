"""Preemption: SIGTERM between checkpoints -> save, exit 0; the same command resumes bit-identically."""
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time

import pytest

from conftest import ROOT, main_env, run_main

ARGS = ['--config=configs/resnet_digits.py:smoke', '--config.total_steps=160', '--config.log_every=1',
        '--config.checkpoint.every=1000', '--config.evals.eval.every=40', '--config.checkpoint.async_save=True']


def rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def train_rows(workdir):
  return {r['step']: r for r in rows(workdir) if 'train/loss' in r}


def tb_scalar_tags(workdir):
  """Reads TensorBoard event files with the protobuf schema only (no TensorFlow, no tensorboard)."""
  from tensorboardX.proto import event_pb2
  tags = set()
  tb = os.path.join(workdir, 'tb')
  for name in os.listdir(tb):
    with open(os.path.join(tb, name), 'rb') as f:
      while header := f.read(12):
        (length,) = struct.unpack('<Q', header[:8])
        ev = event_pb2.Event.FromString(f.read(length))
        f.read(4)
        tags.update(v.tag for v in ev.summary.value)
  return tags


@pytest.fixture(scope='module')
def reference(tmp_path_factory, digits_ready):
  """The uninterrupted run every interrupted one is compared with."""
  ref = str(tmp_path_factory.mktemp('ref'))
  full = run_main(*ARGS, f'--workdir={ref}')
  assert full.returncode == 0, full.stderr[-3000:]
  return ref


def start(workdir, *extra):
  return subprocess.Popen([sys.executable, '-m', 'ftjax.main', *ARGS, *extra, f'--workdir={workdir}'], cwd=ROOT,
                          env=main_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc, n):
  for line in proc.stdout:
    if line.startswith('step') and int(line.split()[1].split('/')[0]) >= n:
      return
  raise AssertionError(f'run ended before step {n}: {proc.stderr.read()[-3000:]}')


def test_sigterm_between_checkpoints_resumes_bit_identically(tmp_path, reference):
  ref, cut = reference, str(tmp_path / 'cut')

  # Interrupted run: SIGTERM once training is under way, long before the end and with no periodic save.
  proc = start(cut)
  wait_for_step(proc, 30)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert 'SIGTERM: saved step' in out
  stopped = int(out.split('SIGTERM: saved step')[1].split()[0])
  assert 30 <= stopped < 160
  assert os.listdir(os.path.join(cut, 'checkpoints')) == [str(stopped)]

  again = run_main(*ARGS, f'--workdir={cut}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from {cut}/checkpoints/{stopped}' in again.stdout

  a, b = train_rows(ref), train_rows(cut)
  assert sorted(a) == sorted(b) == list(range(1, 161))
  for step in range(stopped + 1, 161):          # every step after the resume, bit for bit
    assert a[step] == b[step], (step, a[step], b[step])
  assert a[160]['train/loss'] == b[160]['train/loss']
  evals_a = [r for r in rows(ref) if 'test/accuracy' in r]
  evals_b = [r for r in rows(cut) if 'test/accuracy' in r]
  assert evals_a == evals_b and len(evals_a) == 1
  # It learned something (the smoke model, 4 epochs): far above the 10% of chance.
  assert evals_a[0]['test/accuracy'] > 0.5
  assert {'train/loss', 'train/learning_rate', 'eval/accuracy', 'test/accuracy'} <= tb_scalar_tags(ref)
  # The best checkpoint is kept beside the latest ones.
  assert len(os.listdir(os.path.join(ref, 'best'))) == 1


def test_hard_kill_resumes_from_last_periodic_checkpoint(tmp_path, reference):
  """SIGKILL (no chance to save, maybe mid-way through an async save): the rerun restarts from the last
  complete checkpoint, drops the metrics rows written after it, and still matches the reference."""
  cut = str(tmp_path / 'cut')
  proc = start(cut, '--config.checkpoint.every=25')
  wait_for_step(proc, 60)
  proc.kill()
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  logged = max(train_rows(cut))
  again = run_main(*ARGS, '--config.checkpoint.every=25', f'--workdir={cut}')
  assert again.returncode == 0, again.stderr[-3000:]
  resumed = int(re.search(r'resumed from \S+/checkpoints/(\d+)', again.stdout).group(1))
  assert resumed % 25 == 0 and resumed <= logged < 160
  steps = [r['step'] for r in rows(cut) if 'train/loss' in r]
  assert steps == list(range(1, 161))            # no duplicated rows from the lost steps
  a, b = train_rows(reference), train_rows(cut)
  for step in range(resumed + 1, 161):
    assert a[step] == b[step], step


def test_rerun_of_finished_job_does_nothing(tmp_path, digits_ready):
  wd = str(tmp_path / 'w')
  args = ['--config=configs/resnet_digits.py:smoke', '--config.total_steps=3', '--config.evals.eval.every=0']
  assert run_main(*args, f'--workdir={wd}').returncode == 0
  n = len(rows(wd))
  again = run_main(*args, f'--workdir={wd}')
  assert again.returncode == 0 and 'nothing to do' in again.stdout
  assert len(rows(wd)) == n


def test_signals_during_an_evaluation_stop_within_seconds_and_it_is_redone(tmp_path, digits_ready):
  """A cloud preemption notice gives ~30 s. SIGTERM during a long evaluation abandons it, saves and
  exits 0; the resume redoes it. A second signal while stopping exits at once with one line, and the
  workdir still resumes."""
  args = ['--config=configs/resnet_digits.py:smoke', '--config.total_steps=10', '--config.log_every=1',
          '--config.input.dataset=synthetic(n=60000, size=8, channels=1, classes=10)',
          '--config.evals.eval.every=10', '--config.evals.test.split=test[:64]']

  def interrupt_evaluation(wd, second_after=None):
    proc = subprocess.Popen([sys.executable, '-m', 'ftjax.main', *args, f'--workdir={wd}'], cwd=ROOT, env=main_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
      if line.startswith('step     10/'):       # the evaluation at step 10 starts right after this line
        break
    time.sleep(1.0)
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    if second_after is not None:              # while the first one is being handled (abandon, save)
      time.sleep(second_after)
      proc.send_signal(signal.SIGTERM)
    abandoned = None
    for line in proc.stdout:
      if 'abandoned the evaluation' in line:
        abandoned = time.time() - t
        break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err, abandoned, time.time() - t

  wd = str(tmp_path / 'once')
  code, out, err, abandoned, took = interrupt_evaluation(wd)
  assert code == 0 and 'Traceback' not in err, err[-3000:]
  assert abandoned is not None and 'SIGTERM: saved step 10' in out, out[-3000:]
  assert not [r for r in rows(wd) if 'eval/accuracy' in r]
  again = run_main(*args, f'--workdir={wd}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from {wd}/checkpoints/10' in again.stdout and 'redoing the evaluations' in again.stdout
  evals = [r for r in rows(wd) if 'eval/accuracy' in r]
  assert len(evals) == 1 and evals[0]['step'] == 10 and evals[0]["eval/examples"] == 60000
  seconds = float(re.search(r'eval @ 10: .*\((\d+\.\d)s\)', again.stdout).group(1))
  # Abandoned well before the evaluation would have ended; saved and gone inside a preemption notice.
  assert abandoned < seconds / 2 and took < 30, (abandoned, took, seconds)

  wd = str(tmp_path / 'twice')
  code, out, err, _, _ = interrupt_evaluation(wd, second_after=0.3)
  assert code == 128 + signal.SIGTERM, err[-3000:]
  assert err.startswith('ftjax: error: second SIGTERM') and len(err.strip().splitlines()) == 1
  again = run_main(*args, f'--workdir={wd}', '--config.evals.eval.split=test[:64]')   # resumable (or afresh)
  assert again.returncode == 0 and 'Traceback' not in again.stderr, again.stderr[-3000:]
  assert [r['step'] for r in rows(wd) if 'eval/accuracy' in r] == [10]
