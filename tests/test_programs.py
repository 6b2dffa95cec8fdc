"""What one process shares between runs: their jitted programs (train.programs) and evaluation batches
(data.eval_batches), and only when nothing that makes them differs."""
import numpy as np
import pytest

from conftest import run_cli


def _config(*overrides):
  import importlib.util
  import os
  from conftest import ROOT
  from ftjax import defaults
  spec = importlib.util.spec_from_file_location('c', os.path.join(ROOT, 'configs', 'resnet_digits.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config('smoke')
  for key, value in overrides:
    node = c
    *path, last = key.split('.')
    for p in path:
      node = node[p]
    node[last] = value
  return defaults.complete(c)


def test_program_key_ignores_seed_data_and_init_but_not_what_the_step_computes():
  from ftjax import parallel, train
  mesh = parallel.make_mesh((1,), ('data',))
  key = lambda *o, steps=10: train.program_key(_config(*o), mesh, steps)
  base = key()
  assert key(('seed', 7), ('init.source', '/elsewhere'), ('input.train_split', 'train[:50]'),
             ('evals.eval.every', 3)) == base
  for changed in [(('optim.lr', 0.5),), (('model.width', 0.5),), (('task.label_smoothing', 0.25),),
                  (('schedule.warmup_steps', 3),), (('optim.accum_steps', 2),)]:
    assert key(*changed) != base, changed
  assert key(steps=11) != base                              # the schedule's length
  assert train.program_key(_config(), parallel.make_mesh((2,), ('data',)), 10) != base


def test_a_second_run_reuses_the_programs_and_computes_the_same(tmp_path, digits_ready):
  from ftjax import train
  args = ['--config=configs/resnet_digits.py:smoke', '--config.total_steps=4', '--config.log_every=1']
  first = run_cli(*args, f'--workdir={tmp_path / "a"}')
  assert first.returncode == 0, first.stderr[-2000:]
  progs = list(train._PROGRAMS.values())[-1]
  again = run_cli(*args, f'--workdir={tmp_path / "b"}')
  assert again.returncode == 0 and list(train._PROGRAMS.values())[-1] is progs
  strip = lambda out: [line.split(' | ')[:2] for line in out.splitlines() if line.startswith('step')]
  assert strip(again.stdout) == strip(first.stdout) and len(strip(first.stdout)) == 4    # same losses, step for step
  other = run_cli(*args, '--config.seed=3', f'--workdir={tmp_path / "c"}')    # same program, its own init
  assert other.returncode == 0 and list(train._PROGRAMS.values())[-1] is progs
  assert strip(other.stdout) != strip(first.stdout)


@pytest.fixture
def text_input():
  from ml_collections import ConfigDict
  return ConfigDict(dict(dataset='synthetic_text(n=40)', data_dir='', tokenizer='', pack=False, causal_pack=False))


def test_evaluation_batches_are_made_once_per_split_and_equal_a_fresh_read(text_input, monkeypatch):
  from ftjax.data import pipeline
  args = ('validation', 'normalize(0, 1)', 16)
  image_input = text_input.copy_and_resolve_references()
  image_input.dataset = 'synthetic(n=40, size=4, channels=1, classes=3)'
  first = list(pipeline.eval_batches(image_input, *args))
  for b in first:                          # what an evaluator does to the batches it is given
    b.pop('_mask')
  reads = []
  real = pipeline._read_eval_batches
  monkeypatch.setattr(pipeline, '_read_eval_batches', lambda *a: reads.append(a) or real(*a))
  again = list(pipeline.eval_batches(image_input, *args))
  assert not reads and len(again) == 3 and all('_mask' in b for b in again)
  fresh = list(real(image_input, *args, 0, 1, None, None))
  for x, y in zip(again, fresh):
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
  list(pipeline.eval_batches(image_input, 'validation', 'normalize(0, 1)', 8))     # another batch size: read
  assert len(reads) == 1


def test_files_are_read_again_and_an_abandoned_evaluation_keeps_nothing(tmp_path, text_input, monkeypatch):
  from ftjax.data import pipeline
  path = tmp_path / 'd.npz'
  text_input.dataset = str(path)
  labels = lambda: [int(x) for b in pipeline.eval_batches(text_input, 'validation', 'normalize(0, 1)', 4)
                    for x in b['label'][b['_mask'] > 0]]
  np.savez(path, images=np.zeros((6, 4, 4, 1), np.uint8), labels=np.arange(6))
  assert labels() == list(range(6))
  np.savez(path, images=np.zeros((6, 4, 4, 1), np.uint8), labels=np.arange(6)[::-1])
  assert labels() == list(range(6))[::-1]          # the rewritten file, not a kept copy
  text_input.dataset = 'synthetic(n=40, size=4, channels=1, classes=3)'
  batches = pipeline.eval_batches(text_input, 'test', 'normalize(0, 1)', 4)
  next(batches)
  batches.close()                                  # abandoned after one batch (a signal, an error)
  reads = []
  real = pipeline._read_eval_batches
  monkeypatch.setattr(pipeline, '_read_eval_batches', lambda *a: reads.append(a) or real(*a))
  assert len(list(pipeline.eval_batches(text_input, 'test', 'normalize(0, 1)', 4))) == 10 and len(reads) == 1
