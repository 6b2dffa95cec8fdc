"""Perplexity of a causal LM over a whole split: exp(sum of token losses / tokens), every counted
token once across processes (padding rows of the last batch and predictions of weight 0 left out).

With unigram=True it also reports the unigram baseline on the very same tokens: each scored by its
frequency in the train split's stream (documents + EOS, input.text_field, the run's tokenizer) with
add-one smoothing, p(t) = (count(t) + 1) / (N + V). A model that learnt anything beats it.
Metrics: <name>/perplexity, loss, accuracy (next token), tokens, unigram_perplexity.
"""
import jax
import numpy as np

from ftjax import data, evals, parallel
from ftjax.data import packing
from ftjax.errors import UserError

DEFAULTS = dict(
    unigram=True,           # also report <name>/unigram_perplexity (token counts of input.train_split)
)


def unigram_log_probs(counts) -> np.ndarray:
  """log p(t) per token id, add-one smoothed over the whole vocabulary."""
  counts = np.asarray(counts, np.float64)
  return np.log((counts + 1.0) / (counts.sum() + len(counts)))


class Evaluator:

  def __init__(self, name, cfg, *, config, predict_fn, mesh, **_):
    self.name, self.cfg, self.input = name, cfg, config.input
    self.predict_fn, self.sharding = predict_fn, parallel.batch_sharding(mesh)
    self.pp = cfg.pp or config.input.pp_eval
    data.check_split(self.input, cfg.split, self.pp)   # fail now, not at the first evaluation
    self.log_probs = None
    if cfg.unigram:
      tok = data.tokenizer(self.input)
      if tok is None:
        raise UserError(f'evals.{name}: unigram=True needs input.tokenizer (or set unigram=False)')
      i = self.input
      self.log_probs = unigram_log_probs(packing.token_counts(i.dataset, i.train_split, i.data_dir, i.text_field, tok))

  def sums(self, state) -> dict:
    """Token-weighted sums over the split: loss, correct, tokens, and the unigram baseline's loss."""
    batches = data.eval_batches(self.input, self.cfg.split, self.pp, self.cfg.batch_size, jax.process_index(),
                                jax.process_count())
    total = dict(loss=0.0, correct=0.0, tokens=0.0, unigram=0.0)
    for local in batches:      # one batch at a time: a long split is never held on the host whole
      out = evals.collect(self.predict_fn, state, [local], self.sharding)
      w = out['weight'].astype(np.float64) * out['_mask'].reshape(-1, *([1] * (out['weight'].ndim - 1)))
      total['loss'] += float((out['loss'] * w).sum())
      total['correct'] += float(((out['pred'] == out['label']) * w).sum())
      total['tokens'] += float(w.sum())
      if self.log_probs is not None:
        total['unigram'] -= float((self.log_probs[out['label']] * w).sum())
    return total

  def __call__(self, state) -> dict:
    s = self.sums(state)
    n = s['tokens']
    if not n:
      raise UserError(f'evals.{self.name}: split {self.cfg.split!r} has no token to score')
    out = {'perplexity': np.exp(s['loss'] / n), 'loss': s['loss'] / n, 'accuracy': s['correct'] / n, 'tokens': n}
    if self.log_probs is not None:
      out['unigram_perplexity'] = np.exp(s['unigram'] / n)
    return {f'{self.name}/{k}': float(v) for k, v in out.items()}

