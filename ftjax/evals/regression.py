"""Pearson and Spearman correlation and MSE over a whole split (GLUE STS-B's metrics)."""
import numpy as np

from ftjax.evals import classification


DEFAULTS = {}      # only evals.COMMON


class Evaluator(classification.Evaluator):

  def __call__(self, state) -> dict:
    from scipy import stats      # here, not at import: see classification.Evaluator
    out = self.outputs(state)
    y, p = out['label'], out['pred']
    return {f'{self.name}/pearson': float(stats.pearsonr(p, y)[0]),
            f'{self.name}/spearman': float(stats.spearmanr(p, y)[0]),
            f'{self.name}/mse': float(np.mean((p - y) ** 2)),
            f'{self.name}/examples': float(len(y))}
