"""The input pipeline: the one module that calls the stages, in this order (train_iterator,
check_split and eval_batches alike):

1. tokenizers.tokenizer: input.tokenizer loaded, or trained once on the train split (read with sources);
2. `_source`: the split from sources.get_source, or with input.pack from packing.packed, which reads it
   the same way and packs its documents into fixed-length sequences once per process (with
   input.causal_pack, packing.causal_split: the split cut into blocks, for evaluation);
3. ops.parse: the per-example ops of pp_train / pp_eval (registered by image_ops and text_ops, imported
   here), every example checked as it is made (`_examples`);
4. grain. Train: this process's shard -> shuffle (reshuffled every epoch) -> repeat -> per-example
   ops with a (seed, index) rng -> batch. The iterator's state is one integer, saved with checkpoints,
   so a resumed run sees exactly the batches an uninterrupted run would have.
   Train with input.causal_pack (`_causal_train_iterator`): documents shuffled every epoch -> tokens +
   EOS -> blocks (packing.causal_blocks) -> blocks shuffled in windows -> ops -> global batches, of
   which each process keeps its rows; the state is grain's nested dict (packing.Resumable).
   Eval: every example exactly once, the last batch padded and masked (`_mask`), the same number of
   batches on every process. With `bucket` (text from the tokenize op), examples are batched in order
   of length and each batch's token arrays cut to the next multiple of `bucket` past its longest
   example (`_index` gives each row's place in the split, for evals.collect to restore the order).
"""
import collections
import hashlib
import json
import math

import grain
import numpy as np

from ftjax.data import image_ops, ops, packing, sources, text_ops, tokenizers  # noqa: F401  (*_ops register ops)
from ftjax.errors import UserError


def local_batch_size(global_batch, process_count, what='input.batch_size'):
  if global_batch % process_count:
    raise UserError(f'{what}={global_batch} is not divisible by the {process_count} processes')
  return global_batch // process_count


def _source(cfg, split, tok):
  """Step 2: the split's examples, or with input.pack its packed sequences, or with input.causal_pack
  its blocks."""
  if cfg.get('causal_pack'):
    _check_causal(cfg, split, tok)
    return packing.causal_split(cfg.dataset, split, cfg.data_dir, cfg.text_field, cfg.max_len,
                                bool(cfg.get('doc_mask')), tok)
  if not cfg.get('pack'):
    return sources.get_source(cfg.dataset, split, cfg.data_dir)
  if tok is None:
    raise UserError('input.pack needs input.tokenizer')
  return packing.packed(cfg.dataset, split, cfg.data_dir, cfg.text_field, cfg.max_len, cfg.nsp, tok)


def _check_causal(cfg, split, tok):
  """input.causal_pack's settings and the split's text field, before any tokenisation."""
  if cfg.get('pack'):
    raise UserError('input.pack (MLM sequences) and input.causal_pack (causal-LM blocks) exclude each other; '
                    'set one')
  if tok is None:
    raise UserError("input.causal_pack needs input.tokenizer (e.g. 'bpe:8000')")
  if cfg.max_len < 2:
    raise UserError(f'input.max_len={cfg.max_len}: a causal-LM block needs at least 2 tokens')
  src = sources.get_source(cfg.dataset, split, cfg.data_dir)
  if len(src) and cfg.text_field not in src[0]:
    raise UserError(f'dataset {cfg.dataset!r} split {split!r}: no field {cfg.text_field!r} to pack (it has '
                    f'{", ".join(map(repr, sorted(src[0])))}); set input.text_field')
  return src


def _examples(src, pp, seed, where, classes=None):
  """(grain dataset over src, dataset -> preprocessed dataset). Every example is checked as it is
  made (fields present, labels within `classes` = (count, config key)); example 0 and the label
  column, where the source has one, are checked now, before any compute."""
  column = getattr(src, 'label_column', lambda: None)()
  if column is not None and len(column):
    _check_labels(np.asarray(column), where, classes)
  fn = _checked(pp, where, classes)
  if len(src):
    fn(src[0], np.random.default_rng(0))
  return grain.MapDataset.source(src), lambda d: d.random_map(fn, seed=seed)


def _checked(pp, where, classes):
  """pp (example, rng) -> example, with its failures as UserErrors and the result checked."""
  def fn(ex, rng):
    try:
      out = pp(ex, rng)
    except KeyError as e:
      have = ', '.join(map(repr, sorted(ex))) if isinstance(ex, dict) else type(ex).__name__
      raise UserError(f'{where}: an example has no field {e} (it has {have}); name the right fields in the config '
                      '(input.text_field, the fields of the tokenize / label ops)') from None
    except (TypeError, ValueError, AttributeError) as e:
      raise UserError(f'{where}: cannot preprocess an example ({type(e).__name__}: {" ".join(str(e).split())[:200]})'
                      ) from None
    if classes and isinstance(out.get('label'), (str, bytes)):
      raise UserError(f'{where}: label {out["label"]!r} is text; turn it into a class index with the label op, '
                      'e.g. label("label", names=("negative", "positive")) in input.pp_train and pp_eval')
    if 'label' in out:
      _check_labels(np.asarray(out['label']), where, classes)
    return _fix(out)
  return fn


def _check_labels(labels, where, classes):
  if np.issubdtype(labels.dtype, np.integer):
    if classes and labels.size and (labels.min() < 0 or labels.max() >= classes[0]):
      n, key = classes
      bad = labels.min() if labels.min() < 0 else labels.max()
      raise UserError(f'{where}: label {bad} is outside 0..{n - 1} ({key}={n}); set {key} to the number of '
                      'classes in the data, or fix the labels')
  elif np.issubdtype(labels.dtype, np.floating) and not np.isfinite(labels).all():
    raise UserError(f'{where}: a label is {labels[~np.isfinite(labels)].ravel()[0]}; regression targets must be '
                    'finite numbers')


def _fix(ex):
  """Only arrays reach the device: strings left over (raw text) are dropped; int labels are int32."""
  ex = {k: v for k, v in ex.items() if not isinstance(v, (str, bytes, np.bytes_))}
  if 'label' in ex and np.issubdtype(np.asarray(ex['label']).dtype, np.integer):
    ex['label'] = np.int32(ex['label'])
  return ex


def train_iterator(cfg, seed, process_index=0, process_count=1, classes=None):
  """Returns (grain iterator with get_state/set_state, number of train examples in all processes).
  classes: (count, config key) that integer labels must lie under, or None."""
  tok = tokenizers.tokenizer(cfg)
  if cfg.get('causal_pack'):
    return _causal_train_iterator(cfg, seed, tok, process_index, process_count)
  src = _source(cfg, cfg.train_split, tok)
  bs = local_batch_size(cfg.batch_size, process_count)
  if len(src) < cfg.batch_size:
    raise UserError(f'train split {cfg.train_split!r} of {cfg.dataset!r} has {len(src)} examples, '
                    f'fewer than the batch of {cfg.batch_size}')
  ds, with_pp = _examples(src, ops.parse(cfg.pp_train, tok=tok), seed + 1,
                          f'dataset {cfg.dataset!r} split {cfg.train_split!r}', classes)
  ds = with_pp(ds.shuffle(seed=seed).repeat(None))
  if process_count > 1:
    # One global stream, whatever the process count: process p reads rows [p*bs, (p+1)*bs) of every
    # global batch, so a run's data (and augmentation randomness) does not depend on how many
    # processes share it, and a checkpoint resumes on another process count.
    stream, gb = ds, cfg.batch_size
    ds = grain.MapDataset.range(len(stream) // process_count).map(
        lambda k: stream[(k // bs) * gb + process_index * bs + k % bs])
  ds = ds.batch(bs, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch))
  return iter(it), len(src)


def _causal_train_iterator(cfg, seed, tok, process_index, process_count):
  """Returns (iterator with get_state/set_state, blocks in one epoch of the train split). Streamed:
  documents are tokenized as the blocks are needed, never the whole corpus at once. Every process
  reads the one global stream and keeps rows [p*bs, (p+1)*bs) of each global batch, so the data do
  not depend on the process count (each process tokenizes every document: cheap next to the step)."""
  src = _check_causal(cfg, cfg.train_split, tok)
  bs = local_batch_size(cfg.batch_size, process_count)
  tokens = int(packing.token_counts(cfg.dataset, cfg.train_split, cfg.data_dir, cfg.text_field, tok).sum())
  blocks = tokens // cfg.max_len
  if blocks < cfg.batch_size:
    raise UserError(f'train split {cfg.train_split!r} of {cfg.dataset!r} has {tokens} tokens, {blocks} blocks of '
                    f'input.max_len={cfg.max_len}: fewer than the batch of {cfg.batch_size}')
  docs = grain.MapDataset.source(src).shuffle(seed=seed).repeat(None)
  chunks = packing.tokenized_documents(docs, tok, cfg.text_field).to_iter_dataset(
      grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=max(cfg.prefetch, 2 * cfg.num_threads)))
  ds = packing.causal_blocks(chunks, cfg.max_len, tokenizers.pad_token(tok)[1], bool(cfg.get('doc_mask')))
  if cfg.get('block_shuffle', 0) > 1:
    ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=cfg.block_shuffle, seed=seed + 2)
  if cfg.pp_train:
    ds = ds.random_map(_checked(ops.parse(cfg.pp_train, tok=tok), f'dataset {cfg.dataset!r} split '
                                f'{cfg.train_split!r}', None), seed=seed + 1)
  ds = ds.batch(cfg.batch_size, drop_remainder=True)
  if process_count > 1:
    lo = process_index * bs
    ds = ds.map(lambda b: {k: v[lo:lo + bs] for k, v in b.items()})
  return packing.Resumable(iter(ds)), blocks


def check_split(cfg, split, pp_spec, classes=None):
  """Fails now, not at the first evaluation, if the split is missing or its first example (or label
  column) does not suit pp_spec and the model's classes."""
  tok = tokenizers.tokenizer(cfg)
  _examples(_source(cfg, split, tok), ops.parse(pp_spec, tok=tok), 0, f'dataset {cfg.dataset!r} split {split!r}',
            classes)


_EVAL_CACHE: 'collections.OrderedDict[str, list]' = collections.OrderedDict()
EVAL_CACHE_BYTES = 256 << 20     # the most this process keeps; a larger split is read again at each evaluation


def clear_eval_cache():
  """Forget every kept evaluation batch: the next evaluation reads and tokenises its split again (the bench
  times that cold pass, as a run's first evaluation pays it)."""
  _EVAL_CACHE.clear()


def _eval_key(cfg, split, pp_spec, batch_size, process_index, process_count, classes, tok, bucket):
  """What an evaluation's batches are made from, or None when they may change within the process: only the
  splits of TFDS and synthetic datasets are kept (files on disk can be rewritten), with the tokenizer's content."""
  if not sources.is_fixed(cfg.dataset):
    return None
  return json.dumps([cfg.to_dict(), split, pp_spec, batch_size, bucket, process_index, process_count, classes,
                     hashlib.sha256(tok.to_str().encode()).hexdigest() if tok is not None else ''],
                    sort_keys=True, default=repr)


def eval_batches(cfg, split, pp_spec, batch_size, process_index=0, process_count=1, classes=None, bucket=0):
  """Yields local batches with a float `_mask` (0 = padding). Same batch count on every process.
  bucket > 0: tokenized text is batched by length and trimmed (`_bucketed`); rows carry `_index`.
  Evaluation preprocessing is deterministic, so a split's batches are made once per process and kept
  (EVAL_CACHE_BYTES, least recently used first out): a run evaluating every N steps, and the next run on
  the same split (an experiment's seeds and arms), read, decode and tokenise it once."""
  tok = tokenizers.tokenizer(cfg)
  key = _eval_key(cfg, split, pp_spec, batch_size, process_index, process_count, classes, tok, bucket)
  if key in _EVAL_CACHE:
    _EVAL_CACHE.move_to_end(key)
    for batch in _EVAL_CACHE[key]:
      yield dict(batch)          # a copy of the dict: callers pop `_mask`
    return
  kept, size = ([] if key else None), 0
  for batch in _read_eval_batches(cfg, split, pp_spec, batch_size, process_index, process_count, classes, tok,
                                  bucket):
    if kept is not None:
      size += _nbytes([batch])
      if size <= EVAL_CACHE_BYTES:
        kept.append(batch)
      else:
        kept = None
    yield dict(batch)
  if kept is not None:          # read to its end (an evaluation a signal abandoned keeps nothing)
    _EVAL_CACHE[key] = kept
    while sum(map(_nbytes, _EVAL_CACHE.values())) > EVAL_CACHE_BYTES:
      _EVAL_CACHE.popitem(last=False)


def _nbytes(batches) -> int:
  return sum(v.nbytes for b in batches for v in b.values())


def _read_eval_batches(cfg, split, pp_spec, batch_size, process_index, process_count, classes, tok, bucket=0):
  src = _source(cfg, split, tok)
  bs = local_batch_size(batch_size, process_count, f'eval batch_size for split {split!r}')
  ds, with_pp = _examples(src, ops.parse(pp_spec, tok=tok), 0, f'dataset {cfg.dataset!r} split {split!r}', classes)
  ds = with_pp(ds)
  keys = _token_keys(ds[0]) if bucket and len(src) else ()
  if keys:
    yield from _bucketed(ds, keys, batch_size, bs, process_index, bucket)
    return
  # Process p reads rows [p*bs, (p+1)*bs) of each global batch: the same examples, preprocessing
  # randomness and order as one process would see.
  for b in range(math.ceil(len(src) / batch_size)):
    start = b * batch_size + process_index * bs
    items = [ds[i] for i in range(start, min(start + bs, len(ds)))]
    yield _stack(items, ds[0], bs)


def _stack(items, template, bs):
  n = len(items)
  template = items[0] if items else template
  items = items + [template] * (bs - n)
  batch = {k: np.stack([it[k] for it in items]) for k in template}
  batch['_mask'] = (np.arange(bs) < n).astype(np.float32)
  return batch


TOKEN_KEYS = ('input_ids', 'attention_mask', 'token_type_ids')     # what the tokenize op makes, cut together


def _token_keys(ex):
  """The keys of ex that `_bucketed` may cut: those of the tokenize op (padded on the right), if they are
  the example's only arrays of the sequence's length; else () (packed or masked-LM sequences, images)."""
  mask = ex.get('attention_mask')
  if mask is None or np.ndim(mask) != 1:
    return ()
  seq = [k for k, v in ex.items() if np.ndim(v) >= 1 and np.shape(v)[0] == len(mask)]
  return tuple(seq) if set(seq) <= set(TOKEN_KEYS) else ()


def _bucketed(ds, keys, batch_size, bs, process_index, bucket):
  """Length bucketing: every process preprocesses the whole split (the same order and widths everywhere),
  sorts it by length (stable: ties keep the split's order) and cuts each global batch's token arrays to
  the next multiple of `bucket` past its longest example, at most the full length. A transformer's
  outputs on the real tokens do not depend on how much right padding follows them (up to float rounding),
  and the tweets of the bundled data average half their 64 tokens."""
  items = [ds[i] for i in range(len(ds))]
  full = len(items[0]['attention_mask'])
  lengths = np.array([np.flatnonzero(it['attention_mask']).max(initial=0) + 1 for it in items])
  order = np.argsort(lengths, kind='stable')
  for b in range(math.ceil(len(items) / batch_size)):
    rows = order[b * batch_size:(b + 1) * batch_size]
    width = min(full, -(-int(lengths[rows].max()) // bucket) * bucket)
    mine = rows[process_index * bs:(process_index + 1) * bs]
    cut = [_cut(items[i], keys, width) for i in mine]
    batch = _stack(cut, _cut(items[0], keys, width), bs)
    batch['_index'] = np.concatenate([mine, len(items) + np.arange(bs - len(mine))]).astype(np.int32)
    yield batch


def _cut(ex, keys, width):
  return {k: (v[:width] if k in keys else v) for k, v in ex.items()}
