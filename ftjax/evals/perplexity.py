"""Perplexity of a causal LM over a whole split: exp(sum of token losses / tokens), every counted
token once across processes (padding rows of the last batch and predictions of weight 0 left out).

With unigram=True it also reports the unigram baseline on the very same tokens: each scored by its
frequency in the train split's stream (documents + EOS, input.text_field, the run's tokenizer) with
add-one smoothing, p(t) = (count(t) + 1) / (N + V). A model that learnt anything beats it.
Metrics: <name>/perplexity, loss, accuracy (next token), tokens, unigram_perplexity.

With sample='<prompt>', each evaluation also prints the model's greedy continuation of that prompt
(`<name>/sample:` on the console, not a metric): a glance at what the perplexity means.
"""
import jax
import numpy as np

from ftjax import data, evals, parallel
from ftjax.data import packing
from ftjax.errors import UserError

DEFAULTS = dict(
    unigram=True,           # also report <name>/unigram_perplexity (token counts of input.train_split)
    sample='',              # a prompt: print its greedy continuation at each evaluation ('' = none)
    sample_tokens=32,       # new tokens of that continuation
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
    if cfg.sample:
      self._prepare_sample(config, mesh)

  def _prepare_sample(self, config, mesh):
    """The prompt's tokens and the eval-mode graph definition, checked now rather than after training."""
    from flax import nnx
    from ftjax import generate, models
    from ftjax.data import tokenizers
    where = f'evals.{self.name}.sample'
    self.tok = data.tokenizer(self.input)
    if self.tok is None:
      raise UserError(f'{where} needs input.tokenizer to encode the prompt')
    model = nnx.eval_shape(lambda: models.build(config.model, nnx.Rngs(0)))
    generate.check_model(model, f'{where}: the model')
    self.prompt = self.tok.encode(self.cfg.sample, add_special_tokens=False).ids
    n_pos = int(model.config.n_positions)
    if not self.prompt or len(self.prompt) + self.cfg.sample_tokens > n_pos or self.cfg.sample_tokens < 1:
      raise UserError(f'{where}: a prompt of {len(self.prompt)} tokens and sample_tokens={self.cfg.sample_tokens}; '
                      f'expected a non-empty prompt and 1 <= prompt + new tokens <= n_positions={n_pos}')
    model.eval()
    self.graphdef, self.mesh, self.rules = nnx.split(model, nnx.Param, ...)[0], mesh, tuple(config.sharding_rules)
    self.eos = tokenizers.eos_id(self.tok)   # the tokenizer's, not the model config's (GPT-2's 50256 by default)

  def sample(self, state) -> str:
    """The greedy continuation of cfg.sample by the model in `state` (every process runs it)."""
    from flax import nnx
    from ftjax import generate
    model = nnx.merge(self.graphdef, state.params, state.model_state)
    ids = generate.generate(model, [self.prompt], max_new_tokens=self.cfg.sample_tokens, eos_id=self.eos,
                            mesh=self.mesh, rules=self.rules)[0]
    return self.tok.decode(ids, skip_special_tokens=True)

  def sums(self, state) -> dict:
    """Token-weighted sums over the split: loss, correct, tokens, and the unigram baseline's loss."""
    batches = data.eval_batches(self.input, self.cfg.split, self.pp, self.cfg.batch_size, jax.process_index(),
                                jax.process_count(), bucket=self.cfg.bucket)
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
    if self.cfg.sample:
      text = self.sample(state)
      if jax.process_index() == 0:
        print(f'  {self.name}/sample: {self.cfg.sample!r} -> {text!r}', flush=True)
    return {f'{self.name}/{k}': float(v) for k, v in out.items()}

