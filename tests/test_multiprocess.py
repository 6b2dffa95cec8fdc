"""Real multi-process runs: 2 processes on 127.0.0.1 through launch/local.sh (JAX's distributed runtime,
gloo collectives), against one process with the same number of devices."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import ROOT, main_env, run_cli

SMOKE = ['--config=configs/bert_mlm_pydoc.py:smoke']   # best-checkpoint saving on, as the README runs it


def _local(n, *args, timeout=600):
  env = main_env(1)
  env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env['PATH']
  return subprocess.run(['bash', 'launch/local.sh', str(n), *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _rows(w):
  return [json.loads(line) for line in open(os.path.join(w, 'metrics.jsonl'))]


def _pid_of_process(workdir, index):
  """The pid of `python -m ftjax.main ... --workdir=WORKDIR` that local.sh started as process INDEX."""
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        cmd = f.read().split(b'\0')
      with open(f'/proc/{pid}/environ', 'rb') as f:
        env = f.read().split(b'\0')
    except OSError:
      continue
    if b'ftjax.main' in cmd and f'--workdir={workdir}'.encode() in cmd and f'FTJAX_PROCESS_ID={index}'.encode() in env:
      return int(pid)
  raise AssertionError(f'no process {index} for {workdir}')


def _step_of(line, prefix):
  return int(line.split()[2].split('/')[0]) if line.startswith(prefix + ' step') else -1


def test_two_processes_stop_together_resume_and_equal_one_process_with_two_devices(tmp_path):
  """One 2-process run (launch/local.sh) gets SIGTERM in its second process only: both stop at the same
  step and save; the same command resumes both to the end. Step for step, it equals one uninterrupted
  process with 2 devices; its checkpoint then restores in one process with one device."""
  multi, single = str(tmp_path / 'multi'), str(tmp_path / 'single')
  args = [*SMOKE, '--config.total_steps=40', '--config.log_every=1', '--config.checkpoint.every=1000']
  env = main_env(1)
  env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env['PATH']
  proc = subprocess.Popen(['bash', 'launch/local.sh', '2', *args, f'--workdir={multi}'], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    head = []
    for line in proc.stdout:                     # training is under way in both
      head.append(line)
      if _step_of(line, '[0]') >= 15:
        break
    os.kill(_pid_of_process(multi, 1), signal.SIGTERM)    # only the second process hears it
    out, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  out = ''.join(head) + out
  assert proc.returncode == 0, err[-3000:]
  saved = [int(s) for s in os.listdir(os.path.join(multi, 'checkpoints')) if s.isdigit()]
  # They agree every 10 steps: both stopped at the first multiple of 10 after the signal, and saved it.
  assert len(saved) == 1 and 15 < saved[0] < 40 and saved[0] % 10 == 0, saved
  assert f'[0] SIGTERM: saved step {saved[0]}' in out, out[-3000:]
  assert max(_step_of(x, '[0]') for x in out.splitlines()) == saved[0]

  r = _local(2, *args, f'--workdir={multi}')     # the same command resumes both processes
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'[0] resumed from {multi}/checkpoints/{saved[0]}' in r.stdout, r.stdout[-3000:]
  assert "[0] bert:" in r.stdout and "mesh {'data': 2}" in r.stdout and '[1] bert:' not in r.stdout
  # The latest and the best checkpoint were both saved at the last step, by both processes.
  assert os.listdir(os.path.join(multi, 'best')) == ['40'] and '40' in os.listdir(os.path.join(multi, 'checkpoints'))

  r1 = run_cli(*args, f'--workdir={single}', '--config.mesh_shape=(2,)')    # 2 of this process's 8 devices
  assert r1.returncode == 0, r1.stderr[-3000:]
  a, b = _rows(multi), _rows(single)
  assert [x['step'] for x in a] == [x['step'] for x in b]        # written once, by process 0
  assert [x['step'] for x in a if 'train/loss' in x] == list(range(1, 41))
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_allclose(x[k], y[k], rtol=1e-5, err_msg=k)
  # The two-process checkpoint restores in one process: two more steps continue the run.
  r2 = run_cli(*args, f'--workdir={multi}', '--config.total_steps=42')
  assert r2.returncode == 0, r2.stderr[-3000:]
  assert f'resumed from {multi}/checkpoints/40' in r2.stdout and _rows(multi)[-1]['step'] == 42


def test_losing_a_peer_ends_the_other_process_with_an_error(tmp_path):
  env = main_env(1)
  env.update(FTJAX_COORDINATOR='127.0.0.1:%d' % (20000 + os.getpid() % 20000), FTJAX_NUM_PROCESSES='2')
  args = [sys.executable, '-m', 'ftjax.main', '--config=configs/resnet_digits.py:smoke', f'--workdir={tmp_path}',
          '--config.total_steps=100000', '--config.log_every=1', '--config.distributed.heartbeat_timeout=10']
  procs = [subprocess.Popen(args, cwd=ROOT, env={**env, 'FTJAX_PROCESS_ID': str(i)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    for line in procs[0].stdout:                 # training is under way in both
      if 'step     20/' in line:
        break
    procs[1].send_signal(signal.SIGKILL)
    t = time.time()
    out, _ = procs[0].communicate(timeout=120)
    assert procs[0].returncode != 0
    assert time.time() - t < 120
    assert 'lost contact with another process' in out or 'another task died' in out, out[-3000:]
  finally:
    for p in procs:
      p.kill()


def test_sweep_grid_writes_the_table_marks_the_best_and_skips_finished_runs(tmp_path):
  cmd = [sys.executable, 'launch/sweep.py', '--config=configs/resnet_digits.py:smoke', f'--workdir={tmp_path}',
         '--grid', 'optim.lr=1e-3,1e-2', '--grid', 'seed=1', '--grid', 'total_steps=10', '--parallel=2']
  r = subprocess.run(cmd, cwd=ROOT, env=main_env(1), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  import csv
  rows = list(csv.DictReader(open(tmp_path / 'sweep.csv')))
  assert len(rows) == 2 and {(x['optim.lr'], x['seed'], x['total_steps']) for x in rows} == {
      ('1e-3', '1', '10'), ('1e-2', '1', '10')}
  best = [x for x in rows if x['is_best'] == 'True']
  assert len(best) == 1 and float(best[0]['best']) == max(float(x['best']) for x in rows)
  for x in rows:                       # the table's numbers are the runs' own
    vals = [json.loads(line)['eval/accuracy'] for line in open(os.path.join(x['workdir'], 'metrics.jsonl'))
            if 'eval/accuracy' in line]
    assert float(x['final']) == vals[-1] and float(x['best']) == max(vals)
  md = (tmp_path / 'sweep.md').read_text()
  assert md.count('(best)') == 1 and f"**{best[0]['name']}** (best)" in md
  again = subprocess.run(cmd, cwd=ROOT, env=main_env(1), capture_output=True, text=True, timeout=120)
  assert again.returncode == 0 and again.stdout.count('finished before, skipped') == 2
  assert 'started' not in again.stdout
