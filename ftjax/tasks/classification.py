"""Supervised classification: softmax cross-entropy (optional label smoothing) on batch['label'].

`task.inputs` names the batch keys given to the model: ('image',) for ResNets,
('input_ids', 'attention_mask', 'token_type_ids') for BERT.
"""
import jax
import jax.numpy as jnp
import optax

from ftjax.tasks import call, embed


class Task:

  def __init__(self, cfg):
    self.label_smoothing = cfg.get('label_smoothing', 0.0)
    self.inputs = tuple(cfg.get('inputs', ('image',)))

  def loss(self, model, batch, rng=None):
    """Mean loss over the batch and scalar metrics (means) for logging."""
    logits = call(model, batch, self.inputs, rng).logits.astype(jnp.float32)
    labels = batch['label']
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), self.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, {'loss': loss, 'accuracy': (logits.argmax(-1) == labels).mean()}

  def predict(self, model, batch):
    """Per-example outputs the evaluators reduce on the host: prediction, label and unsmoothed loss."""
    logits = call(model, batch, self.inputs).logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    return {'pred': logits.argmax(-1), 'label': batch['label'], 'loss': loss}

  def features(self, model, batch):
    return embed(model, batch, self.inputs)
