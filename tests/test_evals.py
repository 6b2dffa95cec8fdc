"""Evaluators on frozen features: few-shot ridge regression, linear probe, SVM, k-NN, ridge regression; synthetic data with
known structure (recoverable -> ~100%, shuffled labels -> chance), then inside a real run."""
import json
import os

import numpy as np
import pytest

from conftest import ROOT, main_env, run_cli
from ftjax.evals.fewshot import fewshot_accuracy
from ftjax.evals.knn import knn_accuracy
from ftjax.evals.linear_probe import probe_accuracy
from ftjax.evals.ridge import ridge_scores
from ftjax.evals.svm import svm_accuracy

C, D = 10, 64


def _linear_data(n, seed, noise=0.5):
  """Each class is a Gaussian blob around its own random direction: linearly separable with margin."""
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(123).normal(size=(C, D)) * 2.0
  y = rng.integers(0, C, n)
  return (centres[y] + noise * rng.normal(size=(n, D)) + 5.0).astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope='module')
def blobs():
  return _linear_data(2000, 0) + _linear_data(1000, 1)


def test_fewshot_recovers_linear_structure_and_is_at_chance_on_shuffled_labels(blobs):
  x, y, xt, yt = blobs
  acc = fewshot_accuracy(x, y, xt, yt, shots=(1, 5, 10, 25))
  assert set(acc) == {1, 5, 10, 25}
  assert min(acc[5], acc[10], acc[25]) >= 0.99, acc
  assert acc[1] >= 0.9, acc
  # Labels shuffled everywhere: features say nothing about them.
  sy, syt = np.random.default_rng(0).permutation(y), np.random.default_rng(1).permutation(yt)
  chance = fewshot_accuracy(x, sy, xt, syt, shots=(1, 5, 10, 25), repeats=5)
  assert all(abs(a - 1 / C) < 0.05 for a in chance.values()), chance


def test_linear_probe_and_knn_recover_structure_and_fail_on_noise(blobs):
  x, y, xt, yt = blobs
  acc, l2 = probe_accuracy(x, y, xt, yt)
  assert acc >= 0.99 and l2 > 0
  assert knn_accuracy(x, y, xt, yt) >= 0.99
  sy, syt = np.random.default_rng(0).permutation(y), np.random.default_rng(1).permutation(yt)
  assert abs(probe_accuracy(x, sy, xt, syt)[0] - 1 / C) < 0.04
  assert abs(knn_accuracy(x, sy, xt, syt) - 1 / C) < 0.04
  # Not separable by a linear map of these features, but by neighbourhoods: XOR of two coordinates.
  rng = np.random.default_rng(2)
  a, b = rng.uniform(-1, 1, (2000, 2)), rng.uniform(-1, 1, (1000, 2))
  lab = lambda z: ((z[:, 0] > 0) ^ (z[:, 1] > 0)).astype(np.int32)
  assert probe_accuracy(a, lab(a), b, lab(b))[0] < 0.65
  assert knn_accuracy(a, lab(a), b, lab(b), k=5, temperature=1.0) > 0.9


def test_svm_separates_separable_classes_and_is_at_chance_on_shuffled_labels(blobs):
  x, y, xt, yt = blobs
  acc, c = svm_accuracy(x, y, xt, yt)
  assert acc >= 0.99 and c > 0
  sy, syt = np.random.default_rng(0).permutation(y), np.random.default_rng(1).permutation(yt)
  assert abs(svm_accuracy(x, sy, xt, syt)[0] - 1 / C) < 0.05
  # Two classes on either side of a hyperplane through the origin, with a margin: exactly separable.
  rng = np.random.default_rng(3)
  w = rng.normal(size=D)
  z = rng.normal(size=(1500, D))
  z += np.sign(z @ w)[:, None] * w / np.linalg.norm(w)        # push each point away from the plane
  lab = (z @ w > 0).astype(np.int32)
  assert svm_accuracy(z[:1000], lab[:1000], z[1000:], lab[1000:])[0] >= 0.99


def test_ridge_recovers_a_linear_target_and_not_noise():
  rng = np.random.default_rng(4)
  w = rng.normal(size=D)
  x, xt = rng.normal(size=(1500, D)) * 3 + 1, rng.normal(size=(800, D)) * 3 + 1
  y, yt = x @ w + 0.1 * rng.normal(size=1500), xt @ w + 0.1 * rng.normal(size=800)
  res, alpha = ridge_scores(x, y, xt, yt)
  assert res['r2'] > 0.99 and res['pearson'] > 0.99 and res['spearman'] > 0.99 and alpha > 0
  assert res['mse'] == pytest.approx(np.mean((yt - np.mean(yt)) ** 2) * (1 - res['r2']))
  noise, _ = ridge_scores(x, rng.normal(size=1500), xt, rng.normal(size=800))
  assert abs(noise['pearson']) < 0.1 and noise['r2'] < 0.02


def test_feature_evaluators_run_in_training_and_standalone(tmp_path, digits_ready):
  """linear_probe, svm, fewshot and knn inside a digits run, then on its checkpoint without training."""
  w = str(tmp_path / 'w')
  cfg = tmp_path / 'probe_cfg.py'
  cfg.write_text(
      'import importlib.util, os\n'
      f'spec = importlib.util.spec_from_file_location("d", {os.path.join(ROOT, "configs/resnet_digits.py")!r})\n'
      'base = importlib.util.module_from_spec(spec); spec.loader.exec_module(base)\n'
      'from ftjax.defaults import eval_config\n'
      'def get_config(arg=None):\n'
      '  c = base.get_config("smoke")\n'
      '  c.evals.probe = eval_config(type="linear_probe", split="validation", steps=50)\n'
      '  c.evals.few = eval_config(type="fewshot", split="test", shots=(1, 5))\n'
      '  c.evals.nn = eval_config(type="knn", split="test", k=10)\n'
      '  c.evals.svm = eval_config(type="svm", split="test", c_grid=(0.01, 0.1))\n'
      '  return c\n')
  r = run_cli(f'--config={cfg}', f'--workdir={w}')     # one of this process's 8 devices, as the evaluation below
  assert r.returncode == 0, r.stderr[-3000:]
  rows = [json.loads(line) for line in open(os.path.join(w, 'metrics.jsonl'))]
  probe = [x['probe/accuracy'] for x in rows if 'probe/accuracy' in x]
  assert len(probe) == 1 and 0.3 < probe[0] <= 1.0
  svm = [x['svm/accuracy'] for x in rows if 'svm/accuracy' in x]
  assert len(svm) == 1 and 0.3 < svm[0] <= 1.0 and [x['svm/C'] for x in rows if 'svm/C' in x][0] in (0.01, 0.1)
  import subprocess
  import sys
  r = subprocess.run([sys.executable, '-m', 'ftjax.evaluate', f'--config={cfg}', f'--workdir={w}',
                      '--only=probe,few,nn', '--config.mesh_shape=(1,)'], cwd=ROOT, env=main_env(8), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(os.path.join(w, 'evaluate.json')))
  assert set(res['metrics']) >= {'few/1shot', 'few/5shot', 'nn/accuracy', 'probe/accuracy'}
  assert res['metrics']['few/1shot'] == pytest.approx([x['few/1shot'] for x in rows if 'few/1shot' in x][0])
  assert res['metrics']['probe/accuracy'] == pytest.approx(probe[0])      # same checkpoint, same probe
  assert res['step'] == 20
