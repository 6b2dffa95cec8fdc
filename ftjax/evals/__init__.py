"""Evaluator registry: `config.evals.<name>.type` is a module under ftjax.evals defining `Evaluator`.

An evaluator is built once (data, jitted functions) and called with the train state; it returns
metrics already prefixed with its name, e.g. {'eval/accuracy': 0.97}. Context passed to every
evaluator: config, predict_fn (the task's per-example outputs), embed_fn (frozen features), mesh.
"""
import contextlib
import copy

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ftjax import data, parallel, registry
from ftjax.errors import UserError


# Keys every evaluator reads; each evaluator module's DEFAULTS adds its own (ftjax/protocols.py: Evaluator).
COMMON = dict(
    type='classification',  # a module under ftjax/evals
    split='validation',     # the split scored
    every=0,                # run every N steps; 0 = once, at the end
    batch_size=256,
    pp='',                  # preprocessing; '' = input.pp_eval
    bucket=16,              # text: batch by length, cut each batch to a multiple of this past its longest; 0 = off
)
# Evaluators on frozen features (FeatureEvaluator) also fit on a train split.
FEATURES = dict(
    dataset='',             # '' = input.dataset; e.g. probe an MLM or GPT run's features on a labelled set (unpacked)
    train_split='',         # '' = input.train_split
)


def get_module(type_: str):
  return registry.load('evals', type_, 'evals.<name>.type')


def defaults(type_: str) -> dict:
  """Every key evaluator `type_` reads, with its default."""
  return copy.deepcopy({**COMMON, 'type': type_, **get_module(type_).DEFAULTS})


def resolve(where: str, cfg) -> ml_collections.ConfigDict:
  """cfg with every key of its evaluator type; a key it does not read is an error naming the known ones.
  `where` names the entry in messages ('evals.probe')."""
  type_ = cfg.get('type') or COMMON['type']
  try:
    schema = defaults(type_)
  except UserError:
    raise UserError(f'{where}: type={type_!r}: no module ftjax/evals/{type_}.py') from None
  unknown = sorted(set(cfg) - set(schema))
  if unknown:
    raise UserError(f'{where}.{unknown[0]}: no such key for type={type_!r} (it reads {", ".join(sorted(schema))})')
  return ml_collections.ConfigDict({**schema, **dict(cfg)})


def build(name, cfg, **context):
  cfg = resolve(f'evals.{name}', cfg)
  return get_module(cfg.type).Evaluator(name, cfg, **context)


_POLL = []     # the innermost polling() function, called before each batch of an evaluation


@contextlib.contextmanager
def polling(fn):
  """fn() runs before each batch that collect() evaluates inside this block: the trainer's raises to
  abandon an evaluation when a signal came (a signal handler itself cannot raise safely)."""
  _POLL.append(fn)
  try:
    yield
  finally:
    _POLL.pop()


def collect(fn, state, batches, sharding) -> dict:
  """fn(state, global batch) over a split's local batches -> {key: numpy array over the whole split,
  on every host}, with '_mask' (0 = padding row). Batches bucketed by length (data.eval_batches' `_index`)
  come back in the split's order, padding rows last, per-token outputs zero-padded to the widest batch."""
  chunks = []
  for local in batches:
    if _POLL:
      _POLL[-1]()
    extra = {k: local.pop(k) for k in ('_mask', '_index') if k in local}
    out = fn(state, parallel.global_batch(local, sharding))
    out.update(parallel.global_batch(extra, sharding))
    chunks.append(multihost_utils.process_allgather(out, tiled=True) if jax.process_count() > 1
                  else jax.device_get(out))
  cat = {k: np.concatenate(_same_shape([c[k] for c in chunks])) for k in chunks[0]}
  if '_index' in cat:
    order = np.argsort(cat.pop('_index'), kind='stable')
    cat = {k: v[order] for k, v in cat.items()}
  return cat


def _same_shape(arrays):
  """Arrays zero-padded to one shape past the batch axis (a zero weight or mask leaves padding out)."""
  shape = np.max([a.shape[1:] for a in arrays], axis=0) if arrays[0].ndim > 1 else None
  if shape is None or all(a.shape[1:] == tuple(shape) for a in arrays):
    return arrays
  return [np.pad(a, [(0, 0)] + [(0, int(m) - d) for m, d in zip(shape, a.shape[1:])]) for a in arrays]


def standardise_and_hold_out(x, x_test, seed=0):
  """Train and test features standardised with train statistics, and a held-out fifth of the train rows (a
  boolean mask) on which a head on frozen features chooses its regularisation (linear_probe, svm, ridge)."""
  mean, std = x.mean(0), x.std(0) + 1e-6
  held = np.random.default_rng(seed).permutation(len(x)) < len(x) // 5
  return (x - mean) / std, (x_test - mean) / std, held


_FEATURES = {'state': None, 'cache': {}}      # the features of the last evaluated state (FeatureEvaluator.features)


class FeatureEvaluator:
  """Base of the evaluators on frozen features (linear_probe, fewshot, knn): the model's `embed`
  output on a train split (cfg.train_split, default input.train_split) and on cfg.split, both
  preprocessed with cfg.pp (default input.pp_eval), of cfg.dataset (default input.dataset)."""
  label_dtype = np.int32        # class ids; a regression head (ridge) keeps numbers

  def __init__(self, name, cfg, *, config, embed_fn, mesh, **_):
    self.name, self.cfg, self.input = name, cfg, config.input
    if cfg.dataset:     # a labelled set read example by example: neither MLM nor causal-LM packing
      self.input = config.input.copy_and_resolve_references()
      with self.input.unlocked():     # an input config from before causal_pack may lack its keys
        self.input.update(dataset=cfg.dataset, pack=False, causal_pack=False, doc_mask=False,
                          tokenizer=data.tokenizer_path(config.input), train_split=cfg.train_split or 'train')
    self.embed_fn, self.sharding = embed_fn, parallel.batch_sharding(mesh)
    self.pp = cfg.pp or config.input.pp_eval
    self.train_split = cfg.train_split or self.input.train_split     # 'train' of its own dataset, if it has one
    for split in (self.train_split, cfg.split):   # fail now, not at the first evaluation
      data.check_split(self.input, split, self.pp)

  def features(self, state, split):
    """(features [N, D] float32, labels [N] as label_dtype) of a whole split. Evaluators of one run that read
    the same split of the same state (a probe and an SVM) compute its features once."""
    key = (self.input.dataset, self.input.get('tokenizer'), split, self.pp, self.cfg.bucket, self.embed_fn)
    if _FEATURES['state'] is not state:
      _FEATURES.update(state=state, cache={})
    if key not in _FEATURES['cache']:
      batches = data.eval_batches(self.input, split, self.pp, self.cfg.batch_size, jax.process_index(),
                                  jax.process_count(), bucket=self.cfg.bucket)
      out = collect(self.embed_fn, state, batches, self.sharding)
      keep = out['_mask'] > 0
      _FEATURES['cache'][key] = out['features'][keep].astype(np.float32), out['label'][keep]
    x, y = _FEATURES['cache'][key]
    return x, y.astype(self.label_dtype)

  def __call__(self, state) -> dict:
    x, y = self.features(state, self.train_split)
    xt, yt = self.features(state, self.cfg.split)
    return {f'{self.name}/{k}': float(v) for k, v in self.score(x, y, xt, yt).items()}

  def score(self, x, y, x_test, y_test) -> dict:
    raise NotImplementedError
