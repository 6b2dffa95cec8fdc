"""ftjax.run / ftjax.load from Python: the example script trains and predicts; a loaded checkpoint
scores what the trainer reported for it; the best and the latest checkpoints are told apart."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, main_env

EXAMPLE = os.path.join(ROOT, 'examples', 'finetune_and_predict.py')
LABELS = ('negative', 'neutral', 'positive')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """The example at smoke size: 6 steps, evaluated at 2, 4 and 6, its best checkpoint by eval/accuracy.
  When the best is the last (6), ftjax.run resumes it here for 2 more steps without best-checkpoint
  tracking, so that the latest checkpoint always differs from the best one."""
  import ftjax
  workdir = str(tmp_path_factory.mktemp('api') / 'run')
  proc = subprocess.run([sys.executable, EXAMPLE, f'--workdir={workdir}', '--smoke'], cwd=ROOT, env=main_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  best = _steps(workdir, 'best')
  if best == [6]:
    config = _config(workdir)
    with config.unlocked():
      config.total_steps = 8
      config.checkpoint.best_metric = ''
      config.mesh_shape = (1,)
      for name in ('test', 'tfidf'):
        del config.evals[name]
    result = ftjax.run(config, workdir)
    assert (result.step, result.stopped_by) == (8, None)
    assert result.metrics['eval/accuracy'] == _rows(workdir)[8]['eval/accuracy']
  latest = _steps(workdir, 'checkpoints')[-1]
  assert len(best) == 1 and best[0] < latest
  return dict(proc=proc, workdir=workdir, best=best[0], latest=latest)


def _steps(workdir, sub):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, sub)) if n.isdigit())


def _config(workdir):
  import ml_collections
  with open(os.path.join(workdir, 'config.json')) as f:
    return ml_collections.ConfigDict(json.load(f))


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r for r in map(json.loads, f) if 'eval/accuracy' in r}


def _validation(loaded):
  """The split the run's eval/* metrics were computed on, as texts and labels."""
  from ftjax.data import get_source
  from ftjax.data.sources import as_text
  src = get_source(loaded.config.input.dataset, loaded.config.evals.eval.split)
  rows = [src[i] for i in range(len(src))]
  return [as_text(r['text']) for r in rows], np.array([int(r['label']) for r in rows])


def _same_params(model, step_dir):
  from flax import nnx
  from ftjax import checkpoint, trees
  saved, _, _ = checkpoint.read_params(step_dir)
  mine = trees.flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  saved = trees.flat(saved)
  assert set(mine) == set(saved)
  return all(np.array_equal(np.asarray(mine[k]), np.asarray(saved[k])) for k in saved)


def test_example_trains_and_labels_each_sentence(trained):
  proc = trained['proc']
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'trained to step 6; best eval/accuracy at step {trained["best"]} (' in proc.stdout, proc.stdout[-2000:]
  lines = proc.stdout.splitlines()[-3:]
  predictions = [line.split(maxsplit=1) for line in lines]     # '<label>  <sentence>'
  assert all(p[0] in LABELS and len(p[1]) > 10 for p in predictions), lines


def _check_scores(loaded, row):
  """The loaded model's logits on the validation split give the accuracy and mean loss the trainer
  logged for the same checkpoint (its own jitted predict step over padded batches)."""
  import optax
  texts, labels = _validation(loaded)
  logits = loaded.predict(texts, batch_size=20)     # 32 examples: a chunk of 20, then 12 padded to 20
  assert logits.shape == (len(texts), 3)
  assert np.mean(logits.argmax(-1) == labels) == row['eval/accuracy']
  loss = float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)))
  assert loss == pytest.approx(row['eval/loss'], rel=1e-4)


def test_load_best_is_the_best_checkpoint_and_scores_as_logged(trained):
  import ftjax
  workdir, best = trained['workdir'], trained['best']
  rows = _rows(workdir)
  assert best == max((s for s in rows if s <= 6), key=lambda s: (rows[s]['eval/accuracy'], -s))   # the first best
  loaded = ftjax.load(workdir, mesh_shape=(1,))
  assert (loaded.step, loaded.path) == (best, os.path.join(workdir, 'best', str(best)))
  assert _same_params(loaded.model, loaded.path)
  assert not _same_params(loaded.model, os.path.join(workdir, 'checkpoints', str(trained['latest'])))
  _check_scores(loaded, rows[best])
  assert loaded.tokenizer.get_vocab_size() <= loaded.config.model.vocab_size


def test_load_latest_is_the_last_checkpoint_and_reads_inputs_as_the_evaluator(trained):
  import ftjax
  from ftjax.data import eval_batches
  workdir, latest = trained['workdir'], trained['latest']
  loaded = ftjax.load(workdir, best=False, mesh_shape=(1,))
  assert (loaded.step, loaded.path) == (latest, os.path.join(workdir, 'checkpoints', str(latest)))
  assert _same_params(loaded.model, loaded.path)
  _check_scores(loaded, _rows(workdir)[latest])
  # The inputs are those the evaluator fed the model: the run's own tokenizer and eval preprocessing.
  texts, _ = _validation(loaded)
  cfg = loaded.config
  batch = next(eval_batches(cfg.input, cfg.evals.eval.split, cfg.input.pp_eval, len(texts)))
  mine = loaded.batch(texts)
  assert set(mine) == set(cfg.task.inputs)
  assert all(np.array_equal(mine[k], batch[k]) for k in mine)


def test_a_workdir_without_a_checkpoint_is_one_user_error(trained, tmp_path):
  import shutil

  import ftjax
  with pytest.raises(ftjax.UserError, match='no such directory'):
    ftjax.load(tmp_path / 'absent')
  with pytest.raises(ftjax.UserError, match='no config.json'):
    ftjax.load(tmp_path)
  shutil.copy(os.path.join(trained['workdir'], 'config.json'), tmp_path / 'config.json')
  with pytest.raises(ftjax.UserError, match=r'no checkpoint there yet .*ftjax.run'):
    ftjax.load(tmp_path)
  shutil.copytree(os.path.join(trained['workdir'], 'checkpoints'), tmp_path / 'checkpoints')
  with pytest.raises(ftjax.UserError, match='best=False'):       # no best/: the run tracked no best metric
    ftjax.load(tmp_path)


def test_run_raises_user_errors_to_the_caller(tmp_path):
  """What the command line prints as `ftjax: error: ...` and exits 2 on is an exception here."""
  import ftjax
  with pytest.raises(ftjax.UserError, match='no such file'):
    ftjax.run('configs/no_such_config.py', tmp_path / 'w')
  (tmp_path / 'broken.py').write_text('def get_config(arg=None):\n  raise ValueError("no " + arg)\n')
  with pytest.raises(ftjax.UserError, match="cannot load config .*ValueError: no size"):
    ftjax.run(f'{tmp_path}/broken.py:size', tmp_path / 'w')
  config = ftjax.get_config('configs/text_finetune.py:smoke')
  config.optim.lrr = 0.1
  with pytest.raises(ftjax.UserError, match='optim.lrr: no such key'):
    ftjax.run(config, tmp_path / 'w')
  assert not os.path.exists(tmp_path / 'w')          # stopped before writing anything


def test_import_ftjax_imports_no_jax():
  code = ('import sys, ftjax\n'
          'assert callable(ftjax.run) and callable(ftjax.load) and ftjax.UserError\n'
          'print(sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "tensorflow")))')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=main_env(), capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == '[]'
