"""Masked-language-model pretraining (+ next-sentence prediction when the batch carries its label).

The batch carries fixed-size predictions from the mlm_mask op: masked_positions / masked_ids /
masked_weights [B, P]; the model projects to the vocabulary only there.
"""
import jax.numpy as jnp
import optax

from ftjax.tasks import call, embed

INPUTS = ('input_ids', 'attention_mask', 'token_type_ids')


class Task:

  def __init__(self, cfg):
    self.nsp_weight = cfg.get('nsp_weight', 1.0)

  def _forward(self, model, batch, rng=None):
    out = call(model, batch, INPUTS, rng, masked_positions=batch['masked_positions'])
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch['masked_ids'])
    return out, ce

  def loss(self, model, batch, rng=None):
    out, ce = self._forward(model, batch, rng)
    w = batch['masked_weights']
    n = jnp.maximum(w.sum(), 1.0)
    mlm = (ce * w).sum() / n
    acc = ((out.logits.argmax(-1) == batch['masked_ids']) * w).sum() / n
    metrics = {'mlm_loss': mlm, 'mlm_accuracy': acc}
    loss = mlm
    if out.seq_relationship_logits is not None and 'next_sentence_label' in batch:
      nsp = optax.softmax_cross_entropy_with_integer_labels(out.seq_relationship_logits, batch['next_sentence_label']).mean()
      metrics.update(nsp_loss=nsp, nsp_accuracy=(out.seq_relationship_logits.argmax(-1) == batch['next_sentence_label']).mean())
      loss = mlm + self.nsp_weight * nsp
    metrics['loss'] = loss
    return loss, metrics

  def predict(self, model, batch):
    """Per masked token: prediction, label, loss, and weight (0 for unused prediction slots)."""
    out, ce = self._forward(model, batch)
    return {'pred': out.logits.argmax(-1), 'label': batch['masked_ids'], 'loss': ce,
            'weight': batch['masked_weights']}

  def features(self, model, batch):
    return embed(model, batch, INPUTS)
