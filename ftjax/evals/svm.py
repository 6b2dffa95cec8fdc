"""Linear SVM on frozen features: the paradigm's other simple head beside the logistic probe.

Hinge loss, one-vs-rest (scikit-learn's LinearSVC, liblinear's dual solver), features standardised with
train statistics; C is chosen from cfg.c_grid on a held-out fifth of the train features, then the SVM is
refit on all of them and scored on cfg.split. Config: type='svm', split, train_split, pp, batch_size,
every, c_grid, max_iter.
"""
import numpy as np

from ftjax import evals
from ftjax.evals import FeatureEvaluator

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def svm_accuracy(x, y, x_test, y_test, c_grid=C_GRID, max_iter=2000, seed=0):
  """Returns (test accuracy, chosen C)."""
  import warnings

  from sklearn.exceptions import ConvergenceWarning
  from sklearn.svm import LinearSVC           # here: sklearn takes ~2.5 s to import (classification.py)
  x, x_test, held = evals.standardise_and_hold_out(x, x_test, seed)

  def fit(c, rows):
    with warnings.catch_warnings():      # an unconverged fit on a C too large is still scored, and loses
      warnings.simplefilter('ignore', ConvergenceWarning)
      return LinearSVC(C=c, loss='hinge', dual=True, max_iter=max_iter, random_state=seed).fit(x[rows], y[rows])

  if len(np.unique(y[~held])) < 2:
    raise ValueError('svm: the train features hold fewer than 2 classes')
  scores = [float(np.mean(fit(c, ~held).predict(x[held]) == y[held])) for c in c_grid]
  best = c_grid[int(np.argmax(scores))]
  return float(np.mean(fit(best, slice(None)).predict(x_test) == y_test)), best


DEFAULTS = dict(**evals.FEATURES,
                c_grid=C_GRID,          # SVM C values tried on a held-out fifth of the train features
                max_iter=2000)          # liblinear iterations per fit


class Evaluator(FeatureEvaluator):

  def score(self, x, y, x_test, y_test):
    accuracy, c = svm_accuracy(x, y, x_test, y_test, tuple(self.cfg.c_grid), self.cfg.max_iter)
    return {'accuracy': accuracy, 'C': c}
