"""Test set-up: 8 simulated CPU devices, an isolated TFDS data dir, a shared XLA compilation cache.

XLA_FLAGS must be set before JAX initialises a backend, hence at import time here.
"""
import contextlib
import io
import os
import subprocess
import sys
import tempfile

# One directory per test session, shared by the xdist workers (they share PYTEST_XDIST_TESTRUNUID): the
# embedded datasets are built once and every compiled program is cached once, for every test process.
_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID')
_TMP = os.path.join(tempfile.gettempdir(), f'ftjax-tests-{_RUN}') if _RUN else tempfile.mkdtemp(prefix='ftjax-tests-')
os.makedirs(_TMP, exist_ok=True)
# Tests compile hundreds of small programs and run each a few steps: XLA:CPU's unoptimised code generator
# (LLVM -O0, the loop emitters instead of the fusion emitters) compiles them 3-4x faster. Same numerics in
# every comparison here (PyTorch parity, sharded vs one device, bit-identical resume); the main job and
# the benchmark use XLA's defaults. FTJAX_TEST_XLA_FLAGS='' runs the suite with the defaults.
COMPILE_FLAGS = os.environ.get('FTJAX_TEST_XLA_FLAGS',
                               '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false')
os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=8 {COMPILE_FLAGS}')
os.environ['TFDS_DATA_DIR'] = os.path.join(_TMP, 'tfds')
os.environ['FTJAX_COMPILATION_CACHE'] = os.path.join(_TMP, 'xla-cache')
os.environ['FTJAX_COMPILATION_CACHE_MIN_SECS'] = '0'
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('HF_HUB_OFFLINE', '1')      # a test never reaches the Hugging Face Hub (a missing path stays local)

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_env(devices=1):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}'
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


def run_main(*args, devices=1, timeout=300, **kw):
  """Runs `python -m ftjax.main ARGS` in a subprocess from the repo root; returns CompletedProcess."""
  return subprocess.run([sys.executable, '-m', 'ftjax.main', *args], cwd=ROOT, env=main_env(devices),
                        capture_output=True, text=True, timeout=timeout, **kw)


def run_cli(*args, one_device=True):
  """`python -m ftjax.main ARGS` in this process, through `ftjax.main.cli`: no interpreter start-up and no
  imports per run (~10 s each on 2 cores). One device of this process's eight unless ARGS give a mesh
  (an 8-device mesh of simulated CPU devices makes every program 8 times over). Same fields as run_main's
  CompletedProcess; any exception but the command line's own exit propagates."""
  from ftjax import main
  argv = ['ftjax.main', *args]
  if one_device and not any(a.startswith('--config.mesh_shape=') for a in args):
    argv.append('--config.mesh_shape=(1,)')
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = main.cli(argv)
  return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope='session')
def digits_ready():
  """Builds the embedded digits dataset once per session (also a test that building works)."""
  from ftjax.data import get_source
  return {s: get_source('ftjax_digits', s) for s in ('train', 'validation', 'test')}


def tiny_setup(model_overrides=None, optim_overrides=None, accum_steps=1, total_steps=10):
  """A small ResNet, task, optimizer and the trainer's own step/init functions (not the loop)."""
  from ftjax import defaults, optim, tasks, train
  from ftjax import state as states
  cfg = defaults.base_config()
  cfg.model.update({**dict(name='resnet', depth=18, stages=(1, 1, 1, 1), width=0.125, stem='small', in_channels=1,
                           num_classes=10),
                    **(model_overrides or {})})
  cfg.optim.update({**dict(name='sgd', lr=0.1, momentum=0.0), **(optim_overrides or {})})
  cfg.optim.accum_steps = accum_steps
  cfg.schedule.name = 'constant'
  tx, sched = optim.build(cfg.optim, cfg.schedule, total_steps)
  task = tasks.build(cfg.task)
  g_train, g_eval = states.graphdefs(cfg.model)
  return dict(cfg=cfg, tx=tx, task=task, init=states.make_init(cfg.model, tx, 0),
              step=train.make_train_step(g_train, task, tx, sched, accum_steps),
              predict=train.make_predict_step(g_eval, task))


def digits_batch(n=16, seed=0):
  from sklearn.datasets import load_digits
  import numpy as np
  d = load_digits()
  idx = np.random.default_rng(seed).permutation(len(d.target))[:n]
  images = ((d.images[idx] / 16.0 - 0.5) / 0.5).astype(np.float32)[..., None]
  return {'image': images, 'label': d.target[idx].astype(np.int32)}


def fast_model(ctor):
  """ctor() built under one jit (no per-op eager compiles of the random init): seconds saved per test."""
  from flax import nnx
  from ftjax import state as states
  graphdef, _ = nnx.split(nnx.eval_shape(ctor))
  return nnx.merge(graphdef, states.initialize(lambda: nnx.split(ctor())[1], None))


# The slowest files first: with one file per worker (--dist loadfile), a long file started last leaves
# the other worker idle at the end. Ordered by their time on the 2-core development machine.
SLOW_FIRST = ('test_demo.py', 'test_resume.py', 'test_multiprocess.py', 'test_configs.py', 'test_label_efficiency.py',
              'test_fuzz.py', 'test_evals.py', 'test_sharding.py', 'test_perf.py', 'test_bench.py', 'test_transfer.py')


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))
