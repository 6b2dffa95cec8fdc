"""config.profile: a jax.profiler trace of chosen training steps in the workdir's TensorBoard directory,
with training unchanged; a bad window fails before compute in one line."""
import glob
import os

import pytest

from conftest import ROOT, run_cli

SHORT = ('--config.total_steps=6', '--config.log_every=1', '--config.seed=3')


@pytest.fixture
def config(tmp_path):
  """The digits smoke run without its evaluators (their compilation is most of its time)."""
  path = tmp_path / 'cfg.py'
  path.write_text('import importlib.util\n'
                  f'spec = importlib.util.spec_from_file_location("d", {os.path.join(ROOT, "configs", "resnet_digits.py")!r})\n'
                  'mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n'
                  'def get_config():\n'
                  '  c = mod.get_config("smoke")\n'
                  '  c.evals = {}\n'
                  '  c.checkpoint.best_metric = ""\n'
                  '  return c\n')
  return f'--config={path}'


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [line for line in f if line.strip()]


def test_profile_traces_the_steps_and_leaves_training_unchanged(tmp_path, digits_ready, config):
  plain, traced = str(tmp_path / 'plain'), str(tmp_path / 'traced')
  proc = run_cli(config, f'--workdir={plain}', *SHORT)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'profile:' not in proc.stdout and not os.path.exists(os.path.join(plain, 'tb', 'plugins'))

  proc = run_cli(config, f'--workdir={traced}', *SHORT, '--config.profile.start_step=2', '--config.profile.num_steps=2')
  assert proc.returncode == 0, proc.stderr[-2000:]
  tb = os.path.join(traced, 'tb')
  traces = glob.glob(os.path.join(tb, 'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0, traces
  lines = [line for line in proc.stdout.splitlines() if line.startswith('profile:')]
  assert lines == [f'profile: steps 2-3 traced to {tb} (view: xprof --logdir={tb} --port=6006, or tensorboard '
                   f'--logdir {tb} and its Profile tab; pip install xprof)'], proc.stdout

  rows, plain_rows = _rows(traced), _rows(plain)
  assert len(rows) >= 6 and any('"train/loss"' in r for r in rows)
  assert rows == plain_rows       # every metric, bit for bit (repr floats)


@pytest.mark.parametrize('flags,message', [
    (('--config.profile.start_step=6', '--config.profile.num_steps=2'),
     'profile.start_step=6, profile.num_steps=2: steps 6-7 go past total_steps=6'),
    (('--config.profile.num_steps=-1',), 'profile.num_steps=-1: expected an integer >= 0'),
    (('--config.profile.start_step=0', '--config.profile.num_steps=1'), 'profile.start_step=0: steps count from 1'),
])
def test_a_bad_window_fails_before_compute(tmp_path, digits_ready, config, flags, message):
  workdir = tmp_path / 'w'
  proc = run_cli(config, f'--workdir={workdir}', *SHORT, *flags)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr, proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def test_resumed_or_stopped_inside_the_window(tmp_path):
  """The loop's calls, without the loop: a run resumed inside the window traces the steps left, one resumed
  past it none, and one stopped inside it (signal, error) still writes its trace and frees the profiler."""
  import jax
  import jax.numpy as jnp
  from ftjax.train import StepTrace

  def run(trace, steps, stop_at=None):
    x = jnp.ones(4)
    for s in steps:
      trace.before(s, x)
      x = x * 2
      if s == stop_at:
        break
      trace.after(s, x)
    trace.close(s)

  logs, past = [], tmp_path / 'past'
  run(StepTrace(range(2, 4), str(past), 3, logs.append), range(4, 7))
  assert logs == [] and not past.exists()

  resumed = str(tmp_path / 'resumed')
  run(StepTrace(range(2, 5), resumed, 3, logs.append), range(4, 7))
  assert [line.split(' (')[0] for line in logs] == [f'profile: step 4 traced to {resumed}']
  assert glob.glob(os.path.join(resumed, 'plugins', 'profile', '*', '*.xplane.pb'))

  logs, stopped = [], str(tmp_path / 'stopped')
  run(StepTrace(range(2, 6), stopped, 0, logs.append), range(1, 7), stop_at=3)
  assert [line.split(' (')[0] for line in logs] == [
      f'profile: the run stopped at step 3, inside the traced steps 2-5; the trace so far is in {stopped}']
  assert glob.glob(os.path.join(stopped, 'plugins', 'profile', '*', '*.xplane.pb'))
  jax.profiler.start_trace(str(tmp_path / 'again'))     # the profiler was released: a new trace starts
  jax.profiler.stop_trace()
