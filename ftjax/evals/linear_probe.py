"""Linear probe: multinomial logistic regression on frozen features, fit in JAX with L-BFGS.

Features are standardised with train statistics. The L2 strength is chosen from cfg.l2_grid on a
held-out fifth of the train features, then the probe is refit on all of them and scored on cfg.split.
Config: type='linear_probe', split, train_split, pp, batch_size, every, l2_grid, steps.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax import evals
from ftjax.evals import FeatureEvaluator

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def fit(x, y, weight, l2, *, num_classes: int, steps: int = 200):
  """Weighted mean cross-entropy + l2/2 |W|^2, minimised by `steps` L-BFGS iterations."""
  def loss(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(x @ p['w'] + p['b'], y)
    return (ce * weight).sum() / weight.sum() + 0.5 * l2 * jnp.sum(p['w'] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def body(carry, _):
    p, s = carry
    v, g = value_and_grad(p, state=s)
    u, s = opt.update(g, s, p, value=v, grad=g, value_fn=loss)
    return (optax.apply_updates(p, u), s), v

  p0 = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  (p, _), _ = jax.lax.scan(body, (p0, opt.init(p0)), None, length=steps)
  return p


def probe_accuracy(x, y, x_test, y_test, l2_grid=L2_GRID, steps=200, seed=0):
  """Returns (test accuracy, chosen l2)."""
  x, x_test, held = evals.standardise_and_hold_out(x, x_test, seed)
  c = int(max(y.max(), y_test.max())) + 1
  acc = lambda p, a, b: float(np.mean(np.asarray(jnp.argmax(a @ p['w'] + p['b'], -1)) == b))
  scores = [acc(fit(x, y, (~held).astype(np.float32), l2, num_classes=c, steps=steps), x[held], y[held])
            for l2 in l2_grid]
  best = l2_grid[int(np.argmax(scores))]
  p = fit(x, y, np.ones(len(y), np.float32), best, num_classes=c, steps=steps)
  return acc(p, x_test, y_test), best


DEFAULTS = dict(**evals.FEATURES,
                l2_grid=L2_GRID,        # L2 strengths tried on a held-out fifth of the train features
                steps=200)              # full-batch L-BFGS steps per fit


class Evaluator(FeatureEvaluator):

  def score(self, x, y, x_test, y_test):
    accuracy, l2 = probe_accuracy(x, y, x_test, y_test, tuple(self.cfg.l2_grid), self.cfg.steps)
    return {'accuracy': accuracy, 'l2': l2}
