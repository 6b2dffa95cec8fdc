"""Stage 3 (input.pack): documents -> fixed-length [CLS] ... [SEP] sequences (+ NSP pairs), packed
in memory once per process and served as a random-access source."""
import functools
import zlib

import numpy as np

from ftjax.data.sources import as_text, get_source
from ftjax.data.tokenizers import special_ids
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
