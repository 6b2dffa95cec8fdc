"""Causal language modelling: next-token cross-entropy, the logits at position t scored against token
t+1 of `input_ids`.

A prediction counts only where both tokens are real (attention_mask 1), within one document (equal
`segment_ids`, when the batch has them: input.doc_mask) and where the target is to be learnt
(`loss_mask` 1 at token t+1, when the batch has it: e.g. 0 on a prompt). The model gets input_ids,
attention_mask and, when present, segment_ids, in that order.
"""
import jax.numpy as jnp
import optax

from ftjax.tasks import call, embed

INPUTS = ('input_ids', 'attention_mask', 'segment_ids')


def inputs(batch) -> tuple:
  return tuple(k for k in INPUTS if k in batch)


def target_weights(batch):
  """[B, T-1] float: 1 where predicting token t+1 from position t counts."""
  ids = batch['input_ids']
  mask = batch.get('attention_mask', jnp.ones_like(ids))
  w = (mask[:, :-1] > 0) & (mask[:, 1:] > 0)
  if 'segment_ids' in batch:
    seg = batch['segment_ids']
    w &= seg[:, :-1] == seg[:, 1:]
  if 'loss_mask' in batch:
    w &= batch['loss_mask'][:, 1:] > 0
  return w.astype(jnp.float32)


class Task:

  def __init__(self, cfg):
    del cfg

  def _forward(self, model, batch, rng=None):
    """Per-prediction (cross-entropy, argmax, target, weight), each [B, T-1]."""
    if 'attention_mask' not in batch:
      batch = {**batch, 'attention_mask': jnp.ones_like(batch['input_ids'])}
    logits = call(model, batch, inputs(batch), rng).logits[:, :-1].astype(jnp.float32)
    targets = batch['input_ids'][:, 1:]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return ce, logits.argmax(-1), targets, target_weights(batch)

  def loss(self, model, batch, rng=None):
    """Token-weighted mean over the batch's counted predictions."""
    ce, pred, targets, w = self._forward(model, batch, rng)
    n = jnp.maximum(w.sum(), 1.0)
    loss = (ce * w).sum() / n
    return loss, {'loss': loss, 'perplexity': jnp.exp(loss), 'accuracy': ((pred == targets) * w).sum() / n}

  def predict(self, model, batch):
    """Per prediction ([B, T-1], as mlm's per masked token): prediction, target, loss, and weight
    (0 where it does not count), so a split's token-weighted loss is sum(loss * weight) / sum(weight)."""
    ce, pred, targets, w = self._forward(model, batch)
    return {'pred': pred, 'label': targets, 'loss': ce, 'weight': w}

  def features(self, model, batch):
    """model.embed(input_ids, attention_mask): pooled over the real tokens (segments do not matter)."""
    if 'attention_mask' not in batch:
      batch = {**batch, 'attention_mask': jnp.ones_like(batch['input_ids'])}
    return embed(model, batch, ('input_ids', 'attention_mask'))
