"""Accuracy and mean loss over a whole split, every example counted once (padding masked out)."""
import jax
import numpy as np
from jax.experimental import multihost_utils

from ftjax import data, parallel


class Evaluator:

  def __init__(self, name, cfg, *, config, predict_fn, mesh):
    self.name, self.cfg, self.input = name, cfg, config.input
    self.predict_fn, self.sharding = predict_fn, parallel.batch_sharding(mesh)
    self.pp = cfg.pp or config.input.pp_eval
    # Fail now, not at the first evaluation, if the split is missing.
    data.get_source(self.input.dataset, cfg.split, self.input.data_dir)

  def batches(self):
    return data.eval_batches(self.input, self.cfg.split, self.pp, self.cfg.batch_size,
                             jax.process_index(), jax.process_count())

  def outputs(self, state):
    """Per-example predictions of the whole split, on every host: dict of 1-D numpy arrays."""
    chunks = []
    for local in self.batches():
      mask = local.pop('_mask')
      out = self.predict_fn(state, parallel.global_batch(local, self.sharding))
      out['_mask'] = parallel.global_batch({'m': mask}, self.sharding)['m']
      chunks.append(multihost_utils.process_allgather(out, tiled=True) if jax.process_count() > 1
                    else jax.device_get(out))
    cat = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    keep = cat.pop('_mask') > 0
    return {k: v[keep] for k, v in cat.items()}

  def __call__(self, state) -> dict:
    out = self.outputs(state)
    return {f'{self.name}/accuracy': float(np.mean(out['pred'] == out['label'])),
            f'{self.name}/loss': float(np.mean(out['loss'])),
            f'{self.name}/examples': float(len(out['label']))}
