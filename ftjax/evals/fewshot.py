"""Few-shot accuracy on frozen features, big_vision's protocol: for k in cfg.shots, draw k train
examples per class, fit closed-form ridge regression to +-1 one-hot targets on centred, L2-normalised
features, score on cfg.split; the mean over cfg.repeats draws is logged as '<name>/<k>shot'.
Config: type='fewshot', split, train_split, pp, batch_size, every, shots, repeats, l2_reg.
"""
import jax
import jax.numpy as jnp
import numpy as np

from ftjax import evals
from ftjax.evals import FeatureEvaluator


@jax.jit
def ridge_accuracy(x, y_onehot, x_test, y_test, l2_reg):
  mean = x.mean(0)
  norm = lambda a: (a - mean) / (jnp.linalg.norm(a - mean, axis=1, keepdims=True) + 1e-8)
  x, x_test = norm(x), norm(x_test)
  # Dual form: k * classes examples are far fewer than feature dimensions.
  alpha = jnp.linalg.solve(x @ x.T + l2_reg * jnp.eye(x.shape[0]), 2.0 * y_onehot - 1.0)
  w = x.T @ alpha
  return jnp.mean(jnp.argmax(x_test @ w, -1) == y_test)


def fewshot_accuracy(x, y, x_test, y_test, shots=(1, 5, 10, 25), repeats=3, l2_reg=2.0 ** 10, seed=0):
  """{k: mean accuracy over `repeats` draws of k examples per class}."""
  classes = np.unique(y)
  by_class = [np.flatnonzero(y == c) for c in classes]
  onehot = lambda lab: np.asarray(jax.nn.one_hot(np.searchsorted(classes, lab), len(classes)))
  y_test_idx = np.searchsorted(classes, y_test)
  y_test_idx[~np.isin(y_test, classes)] = -1          # a class never seen in training counts as wrong
  out = {}
  for k in shots:
    accs = []
    for r in range(repeats):
      rng = np.random.default_rng([seed, k, r])
      idx = np.concatenate([rng.choice(ix, min(k, len(ix)), replace=False) for ix in by_class])
      accs.append(float(ridge_accuracy(x[idx], onehot(y[idx]), x_test, y_test_idx, l2_reg)))
    out[k] = float(np.mean(accs))
  return out


DEFAULTS = dict(**evals.FEATURES,
                shots=(1, 5, 10, 25),   # train examples per class
                repeats=3,              # draws averaged per k
                l2_reg=2.0 ** 10)       # ridge strength


class Evaluator(FeatureEvaluator):

  def score(self, x, y, x_test, y_test):
    res = fewshot_accuracy(x, y, x_test, y_test, tuple(self.cfg.shots), self.cfg.repeats, self.cfg.l2_reg)
    return {f'{k}shot': v for k, v in res.items()}
