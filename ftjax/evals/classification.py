"""Accuracy, macro-F1, MCC and mean loss over a whole split, every example counted once (padding and
zero-weight predictions, e.g. unused MLM slots, masked out)."""
import jax
import numpy as np

from ftjax import data, evals, models, parallel


DEFAULTS = {}      # only evals.COMMON


class Evaluator:

  def __init__(self, name, cfg, *, config, predict_fn, mesh, **_):
    self.name, self.cfg, self.input = name, cfg, config.input
    self.predict_fn, self.sharding = predict_fn, parallel.batch_sharding(mesh)
    self.pp = cfg.pp or config.input.pp_eval
    self.classes = models.label_classes(config)
    data.check_split(self.input, cfg.split, self.pp, self.classes)   # fail now, not at the first evaluation

  def outputs(self, state):
    """Per-prediction outputs of the whole split, on every host: dict of flat numpy arrays."""
    batches = data.eval_batches(self.input, self.cfg.split, self.pp, self.cfg.batch_size,
                                jax.process_index(), jax.process_count(), self.classes, bucket=self.cfg.bucket)
    cat = evals.collect(self.predict_fn, state, batches, self.sharding)
    mask = cat.pop('_mask')
    weight = cat.pop('weight', np.ones_like(mask))
    keep = (weight * mask.reshape(mask.shape + (1,) * (weight.ndim - 1))).reshape(-1) > 0
    return {k: v.reshape(-1)[keep] for k, v in cat.items()}

  def __call__(self, state) -> dict:
    from sklearn.metrics import f1_score, matthews_corrcoef   # here: sklearn takes ~2.5 s to import, and every
    out = self.outputs(state)                                 # config loads this module for its DEFAULTS
    y, p = out['label'], out['pred']
    return {f'{self.name}/accuracy': float(np.mean(p == y)),
            f'{self.name}/macro_f1': float(f1_score(y, p, average='macro')),
            f'{self.name}/mcc': float(matthews_corrcoef(y, p)),
            f'{self.name}/loss': float(np.mean(out['loss'])),
            f'{self.name}/examples': float(len(y))}
