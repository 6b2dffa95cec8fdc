"""Stage 3, packing. input.pack (MLM): documents -> fixed-length [CLS] ... [SEP] sequences (+ NSP
pairs), packed in memory once per process and served as a random-access source.
input.causal_pack (causal LM): documents -> their tokens + EOS, concatenated and cut into max_len
blocks by grain's ConcatThenSplit, a stream (pipeline.py assembles it); a document continues in the
next block. Eval splits are cut the same way, held in memory, the last block padded.
"""
import functools
import itertools
import zlib

import grain
import numpy as np

from ftjax.data.sources import as_text, get_source
from ftjax.data.tokenizers import eos_id, pad_token, special_ids
from ftjax.errors import UserError


@functools.lru_cache(maxsize=4)
def packed(dataset, split, data_dir, text_field, max_len, nsp, tok):
  """Packed once per process: evaluators reuse the packing of their split at every evaluation.
  `tok` comes from tokenizers.load_tokenizer's cache, so the same tokenizer is the same cache key."""
  src = get_source(dataset, split, data_dir)
  docs = [src[i][text_field] for i in range(len(src))]
  return _Columns(pack_documents(docs, tok, max_len, nsp=nsp, seed=zlib.crc32(split.encode())))


def pack_documents(docs, tok, max_len: int, nsp: bool = False, seed: int = 0):
  """Documents -> fixed-length [CLS] ... [SEP] sequences that never span two documents.
  Empty documents are skipped; a long one is cut into several sequences. With nsp=True each
  sequence is [CLS] A [SEP] B [SEP] with B the true continuation half of the time (label 0) and a
  span of another document otherwise (label 1), as in BERT."""
  sp = special_ids(tok)
  body = max_len - (3 if nsp else 2)
  if body < 2:
    raise UserError(f'max_len={max_len} is too short for packing')
  enc = tok.encode_batch([as_text(d) for d in docs], add_special_tokens=False)
  chunks, doc_of = [], []
  for i, e in enumerate(enc):
    ids = e.ids
    for s in range(0, len(ids), body):
      if len(ids[s:s + body]) >= 2:
        chunks.append(ids[s:s + body])
        doc_of.append(i)
  if not chunks:
    raise UserError('the corpus has no text left after tokenisation')
  rng = np.random.default_rng(seed)
  n = len(chunks)
  several_docs = len(set(doc_of)) > 1
  ids = np.full((n, max_len), sp['[PAD]'], np.int32)
  types = np.zeros((n, max_len), np.int32)
  nsp_labels = np.zeros(n, np.int32)
  for k, c in enumerate(chunks):
    if not nsp:
      seq = [sp['[CLS]']] + c + [sp['[SEP]']]
    else:
      cut = max(1, len(c) // 2)
      a, b = c[:cut], c[cut:] or c[-1:]
      if rng.random() < 0.5 and n > 1:
        j = int(rng.integers(n))
        while doc_of[j] == doc_of[k] and several_docs:
          j = int(rng.integers(n))
        b, nsp_labels[k] = chunks[j][:len(b)], 1
      seq = [sp['[CLS]']] + a + [sp['[SEP]']] + b + [sp['[SEP]']]
      types[k, len(a) + 2:len(seq)] = 1
    ids[k, :len(seq)] = seq
  out = {'input_ids': ids, 'token_type_ids': types}
  if nsp:
    out['next_sentence_label'] = nsp_labels
  return out


class _Columns:
  """Random access over a dict of equal-length numpy arrays."""

  def __init__(self, cols):
    self.cols = cols
    self.n = len(next(iter(cols.values())))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.cols.items()}


# ---- Causal LM (input.causal_pack) ---------------------------------------------------------------
CHUNK = 128     # documents tokenized together


def tokenized_documents(examples, tok, text_field):
  """grain MapDataset of examples -> MapDataset of chunks: lists of CHUNK documents' tokens (no BERT
  specials) + EOS. A chunk is one encode_batch call, which runs in parallel in Rust without the GIL,
  where one encode per document in grain's threads would hold it."""
  eos, n = eos_id(tok), len(examples)

  def encode(k):
    texts = [as_text(examples[i][text_field]) for i in range(k * CHUNK, min((k + 1) * CHUNK, n))]
    return [np.asarray(e.ids + [eos], np.int32) for e in tok.encode_batch(texts, add_special_tokens=False)]
  return grain.MapDataset.range((n + CHUNK - 1) // CHUNK).map(encode)


class _Documents(grain.experimental.FlatMapTransform):
  """A chunk -> its documents, each {'input_ids': tokens + EOS}."""
  max_fan_out = CHUNK

  def flat_map(self, element):
    return [{'input_ids': ids} for ids in element]


def causal_blocks(chunks, max_len: int, pad_id: int, doc_mask: bool):
  """grain IterDataset of tokenized_documents' chunks -> blocks of max_len: 'input_ids',
  'attention_mask' and with doc_mask 'segment_ids' (the document's index in the block from 1, 0 on
  padding). The stream is cut every max_len tokens (a document goes on in the next block): only a
  finite stream's last block is short, padded with pad_id, attention_mask 0."""
  docs = grain.experimental.FlatMapIterDataset(chunks, _Documents())
  packed = grain.experimental.ConcatThenSplitIterDataset(docs, length_struct={'input_ids': max_len})

  def fn(ex):
    seg = ex['input_ids_segment_ids']
    out = {'input_ids': np.where(seg > 0, ex['input_ids'], pad_id).astype(np.int32),
           'attention_mask': (seg > 0).astype(np.int32)}
    if doc_mask:
      out['segment_ids'] = seg.astype(np.int32)
    return out
  return packed.map(fn)


class Resumable:
  """A grain iterator whose state survives JSON, the checkpoint's format: ConcatThenSplit keeps
  `remainder_slices` as tuples and no longer recognises them as the lists JSON gives back."""

  def __init__(self, it):
    self.it = it

  def __iter__(self):
    return self

  def __next__(self):
    return next(self.it)

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(_slices_as_tuples(state))


def _slices_as_tuples(state):
  if not isinstance(state, dict):
    return state
  return {k: {f: tuple(v) for f, v in s.items()} if k == 'remainder_slices' else _slices_as_tuples(s)
          for k, s in state.items()}


@functools.lru_cache(maxsize=4)
def causal_split(dataset, split, data_dir, text_field, max_len, doc_mask, tok):
  """A split's blocks in document order, cut once per process and held in memory: evaluators score
  every block once (`tok` comes from load_tokenizer's cache, so it is a stable cache key)."""
  src = get_source(dataset, split, data_dir)
  chunks = tokenized_documents(grain.MapDataset.source(src), tok, text_field).to_iter_dataset()
  rows = list(causal_blocks(chunks, max_len, pad_token(tok)[1], doc_mask))
  if not rows:
    raise UserError(f'dataset {dataset!r} split {split!r} has no documents')
  return _Columns({k: np.stack([r[k] for r in rows]) for k in rows[0]})


@functools.lru_cache(maxsize=4)
def token_counts(dataset, split, data_dir, text_field, tok):
  """How often each token id occurs in the split's causal stream (documents + EOS), counted once
  per process without keeping the text: the train split's size in blocks, the unigram baseline."""
  src = get_source(dataset, split, data_dir)
  eos = eos_id(tok)
  counts = np.zeros(tok.get_vocab_size(), np.int64)
  for lo in range(0, len(src), 1024):
    enc = tok.encode_batch([as_text(src[i][text_field]) for i in range(lo, min(lo + 1024, len(src)))],
                           add_special_tokens=False)
    ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in enc), np.int64)
    add = np.bincount(ids, minlength=len(counts))
    counts = np.pad(counts, (0, len(add) - len(counts))) + add
    counts[eos] += len(enc)
  return counts
