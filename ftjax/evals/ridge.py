"""Ridge regression on frozen features, for regression labels (e.g. STS-B similarity): the linear
probe's counterpart when the target is a number.

Features standardised with train statistics; the L2 strength is chosen from cfg.alpha_grid by the MSE on
a held-out fifth of the train features, then the fit is redone on all of them and scored on cfg.split
(Pearson, Spearman, MSE, R^2). Config: type='ridge', split, train_split, pp, batch_size, every, alpha_grid.
"""
import numpy as np

from ftjax import evals
from ftjax.evals import FeatureEvaluator

ALPHA_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def ridge_scores(x, y, x_test, y_test, alpha_grid=ALPHA_GRID, seed=0):
  """Returns ({pearson, spearman, mse, r2} on the test features, chosen alpha)."""
  from scipy import stats
  from sklearn.linear_model import Ridge      # here: sklearn takes ~2.5 s to import (classification.py)
  x, x_test, held = evals.standardise_and_hold_out(x, x_test, seed)
  mse = lambda p, t: float(np.mean((p - t) ** 2))
  errors = [mse(Ridge(alpha=a).fit(x[~held], y[~held]).predict(x[held]), y[held]) for a in alpha_grid]
  best = alpha_grid[int(np.argmin(errors))]
  p = Ridge(alpha=best).fit(x, y).predict(x_test)
  return {'pearson': float(stats.pearsonr(p, y_test)[0]), 'spearman': float(stats.spearmanr(p, y_test)[0]),
          'mse': mse(p, y_test), 'r2': 1.0 - mse(p, y_test) / float(np.var(y_test))}, best


DEFAULTS = dict(**evals.FEATURES,
                alpha_grid=ALPHA_GRID)  # L2 strengths tried on a held-out fifth of the train features


class Evaluator(FeatureEvaluator):
  label_dtype = np.float32      # regression targets: kept as numbers, not class ids

  def score(self, x, y, x_test, y_test):
    res, alpha = ridge_scores(x, y, x_test, y_test, tuple(self.cfg.alpha_grid))
    return {**res, 'alpha': alpha}
