"""k-NN accuracy on frozen features (as in DINO / InstDisc): cosine similarity to every train
feature, the k nearest vote with weight exp(similarity / T). Config: type='knn', split, train_split,
pp, batch_size, every, k (20), temperature (0.07)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ftjax import evals
from ftjax.evals import FeatureEvaluator


@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _predict(x, y, x_test, *, k, num_classes, temperature):
  sim = x_test @ x.T
  top, idx = jax.lax.top_k(sim, k)
  votes = jax.nn.one_hot(y[idx], num_classes) * jnp.exp(top / temperature)[..., None]
  return jnp.argmax(votes.sum(1), -1)


def knn_accuracy(x, y, x_test, y_test, k=20, temperature=0.07, chunk=1024):
  unit = lambda a: a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-8)
  x, x_test = unit(x), unit(x_test)
  k, c = min(k, len(y)), int(max(y.max(), y_test.max())) + 1
  pred = np.concatenate([np.asarray(_predict(x, y, x_test[i:i + chunk], k=k, num_classes=c,
                                             temperature=temperature))
                         for i in range(0, len(x_test), chunk)])
  return float(np.mean(pred == y_test))


DEFAULTS = dict(**evals.FEATURES,
                k=20,                   # neighbours that vote
                temperature=0.07)       # vote weight exp(similarity / temperature)


class Evaluator(FeatureEvaluator):

  def score(self, x, y, x_test, y_test):
    return {'accuracy': knn_accuracy(x, y, x_test, y_test, self.cfg.k, self.cfg.temperature)}
