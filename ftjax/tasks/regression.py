"""Regression (e.g. STS-B): mean squared error of the model's single output against batch['label']."""
import jax.numpy as jnp

from ftjax.tasks import call, embed


class Task:

  def __init__(self, cfg):
    self.inputs = tuple(cfg.get('inputs', ('image',)))

  def _pred(self, model, batch, rng=None):
    return call(model, batch, self.inputs, rng).logits.astype(jnp.float32).reshape(batch['label'].shape)

  def loss(self, model, batch, rng=None):
    err = self._pred(model, batch, rng) - batch['label'].astype(jnp.float32)
    loss = jnp.mean(err ** 2)
    return loss, {'loss': loss}

  def predict(self, model, batch):
    pred = self._pred(model, batch)
    return {'pred': pred, 'label': batch['label'].astype(jnp.float32), 'loss': (pred - batch['label']) ** 2}

  def features(self, model, batch):
    return embed(model, batch, self.inputs)
