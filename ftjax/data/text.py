"""Text: tokenizers, packing a corpus into MLM sequences, dynamic masking, and the text ops.

Tokenizers are HF `tokenizers` (fast WordPiece), loaded from a model directory's tokenizer.json or
vocab.txt. `python -m ftjax.data.text --corpus=ftjax_pydoc --vocab_size=8000 --out=DIR` trains one.
"""
import functools
import os

import numpy as np

from ftjax.errors import UserError, brief, read_text

SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str):
  """A `tokenizers.Tokenizer` from tokenizer.json (file or in a directory) or a directory's vocab.txt.
  An unreadable, empty, non-UTF-8 or malformed file is a UserError naming it."""
  import tokenizers
  from ftjax.hf import resolve
  path = resolve(path)
  tj = os.path.join(path, 'tokenizer.json') if os.path.isdir(path) else path
  vocab = os.path.join(path, 'vocab.txt') if os.path.isdir(path) else None
  if tj.endswith('.json') and os.path.exists(tj):
    src = tj
    expected = 'the tokenizer.json that `tokenizers` / transformers write'
    text = read_text(tj, expected)
    try:
      tok = tokenizers.Tokenizer.from_str(text)
    except Exception as e:       # tokenizers raises a bare Exception for bad JSON and missing fields alike
      raise UserError(f'{tj}: not a readable tokenizer ({brief(e)}); expected {expected}') from None
  elif vocab and os.path.exists(vocab):
    src = vocab
    expected = 'a WordPiece vocab.txt: one token per line, [PAD] [UNK] [CLS] [SEP] [MASK] among them'
    read_text(vocab, expected)      # empty or not UTF-8: said here, not by tokenizers
    lower = True
    cfg = os.path.join(path, 'tokenizer_config.json')
    if os.path.exists(cfg):
      from ftjax.hf import read_json
      lower = read_json(cfg, 'a tokenizer_config.json (a JSON object)').get('do_lower_case', True)
      if not isinstance(lower, bool):
        raise UserError(f'{cfg}: do_lower_case={lower!r}; expected true or false')
    try:
      tok = tokenizers.BertWordPieceTokenizer(vocab, lowercase=lower)._tokenizer
    except Exception as e:
      raise UserError(f'{vocab}: not a readable vocabulary ({brief(e)}); expected {expected}') from None
  else:
    raise UserError(f'no tokenizer at {path!r}: expected tokenizer.json or vocab.txt')
  tok.no_padding()
  tok.no_truncation()
  for s in SPECIALS:
    if tok.token_to_id(s) is None:
      raise UserError(f'{src}: the tokenizer has no {s} token; expected BERT-style special tokens '
                      f'({" ".join(SPECIALS)})')
  return tok


def special_ids(tok) -> dict:
  return {s: tok.token_to_id(s) for s in SPECIALS}


def check_vocab(tok, vocab_size: int, where: str):
  n = tok.get_vocab_size()
  if n > vocab_size:
    raise UserError(f'{where}: the tokenizer has {n} tokens but the model\'s vocab_size is {vocab_size}; '
                    'use the model\'s own tokenizer or set model.vocab_size')


def train_wordpiece(texts, vocab_size: int, out_dir: str, lowercase=True):
  """Trains a BERT WordPiece vocabulary; writes tokenizer.json and vocab.txt into out_dir."""
  import tokenizers
  tok = tokenizers.BertWordPieceTokenizer(lowercase=lowercase)
  tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIALS),
                          show_progress=False)
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir + '.tmp.json'))
  os.replace(out_dir + '.tmp.json', os.path.join(out_dir, 'tokenizer.json'))
  tok.save_model(out_dir)
  return load_tokenizer.__wrapped__(out_dir)


def as_text(x) -> str:
  """TFDS Text features arrive as bytes; invalid UTF-8 is replaced, never fatal."""
  return x.decode('utf-8', errors='replace') if isinstance(x, (bytes, np.bytes_)) else str(x)


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


def mask_tokens(input_ids, rng, *, vocab_size, special, rate=0.15, max_predictions=20, whole_word=None):
  """BERT's dynamic masking of one sequence: `rate` of the non-special tokens (whole words when
  `whole_word` is a bool array marking word-continuation pieces) become 80% [MASK], 10% a random
  token, 10% unchanged. Returns masked ids and fixed-size (positions, ids, weights) of P predictions."""
  ids = np.array(input_ids)
  candidates = np.flatnonzero(~np.isin(ids, list(special.values())))
  if whole_word is not None:          # group pieces into words: a word starts where continuation is False
    starts = [p for p in candidates if not whole_word[p]]
    words = [[p] for p in starts]
    for p in candidates:
      if whole_word[p] and words and p == words[-1][-1] + 1:
        words[-1].append(p)
  else:
    words = [[p] for p in candidates]
  n_pred = min(max_predictions, max(1, int(round(len(candidates) * rate)))) if len(candidates) else 0
  order = rng.permutation(len(words))
  chosen = []
  for w in order:
    if len(chosen) + len(words[w]) > n_pred:
      continue
    chosen += words[w]
    if len(chosen) >= n_pred:
      break
  chosen = np.sort(np.asarray(chosen, np.int64))
  positions = np.zeros(max_predictions, np.int32)
  labels = np.zeros(max_predictions, np.int32)
  weights = np.zeros(max_predictions, np.float32)
  positions[:len(chosen)], labels[:len(chosen)], weights[:len(chosen)] = chosen, ids[chosen], 1.0
  u = rng.random(len(chosen))
  ids[chosen[u < 0.8]] = special['[MASK]']
  rand = chosen[(u >= 0.8) & (u < 0.9)]
  ids[rand] = rng.integers(len(SPECIALS), vocab_size, len(rand))
  return ids, positions, labels, weights


def main(argv=None):
  import argparse
  from ftjax.data import sources
  p = argparse.ArgumentParser(description='Train a WordPiece vocabulary on a corpus.')
  p.add_argument('--corpus', required=True, help='TFDS name (e.g. ftjax_pydoc), .txt or .jsonl file')
  p.add_argument('--split', default='train')
  p.add_argument('--text_field', default='text')
  p.add_argument('--vocab_size', type=int, default=8000)
  p.add_argument('--out', required=True)
  a = p.parse_args(argv)
  try:
    src = sources.get_source(a.corpus, a.split, text_field=a.text_field)
    tok = train_wordpiece((as_text(src[i]['text']) for i in range(len(src))), a.vocab_size, a.out)
  except UserError as e:
    raise SystemExit(f'ftjax: error: {e}')
  print(f'wrote a {tok.get_vocab_size()}-token WordPiece vocabulary to {a.out}')


if __name__ == '__main__':
  main()


# ---- ops (used in input.pp_train / pp_eval strings) --------------------------------------------
from ftjax.data.ops import register  # noqa: E402


@functools.lru_cache(maxsize=8)
def _fixed_length(tok_json: str, max_len: int):
  """A copy of the tokenizer that pads and truncates to max_len: encode() is then thread-safe."""
  import tokenizers
  t = tokenizers.Tokenizer.from_str(tok_json)
  t.enable_truncation(max_len)
  t.enable_padding(length=max_len, pad_id=t.token_to_id('[PAD]'), pad_token='[PAD]')
  return t


@register
def tokenize(max_len=128, fields=('text',), tok=None):
  """Text field(s) -> input_ids / attention_mask / token_type_ids of max_len (two fields: a pair)."""
  if tok is None:
    raise UserError('the tokenize op needs input.tokenizer')
  fields = (fields,) if isinstance(fields, str) else tuple(fields)
  t = _fixed_length(tok.to_str(), max_len)

  def op(ex, rng):
    texts = [as_text(ex[f]) for f in fields]
    e = t.encode(*texts) if len(texts) == 2 else t.encode(texts[0])
    out = {k: v for k, v in ex.items() if k not in fields}
    out.update(input_ids=np.asarray(e.ids, np.int32), attention_mask=np.asarray(e.attention_mask, np.int32),
               token_type_ids=np.asarray(e.type_ids, np.int32))
    return out
  return op


@register
def mlm_mask(rate=0.15, max_predictions=20, whole_word=False, tok=None):
  """Dynamic masking of packed sequences: new masks every epoch, the same ones for the same seed."""
  if tok is None:
    raise UserError('the mlm_mask op needs input.tokenizer')
  special = special_ids(tok)
  vocab = tok.get_vocab_size()
  continuation = np.zeros(vocab, bool)
  if whole_word:
    for piece, i in tok.get_vocab().items():
      continuation[i] = piece.startswith('##')

  def op(ex, rng):
    ids = ex['input_ids']
    masked, pos, labels, weights = mask_tokens(ids, rng, vocab_size=vocab, special=special, rate=rate,
                                               max_predictions=max_predictions,
                                               whole_word=continuation[ids] if whole_word else None)
    return {**ex, 'input_ids': masked.astype(np.int32), 'attention_mask': (ids != special['[PAD]']).astype(np.int32),
            'masked_positions': pos, 'masked_ids': labels, 'masked_weights': weights}
  return op


@register
def label(field='label', names=(), dtype='int'):
  """The example's label from column `field`: by position in `names` when given (string classes in a
  CSV / JSONL), else int(...) or float(...) (dtype='float' for regression)."""
  names = tuple(names)

  def op(ex, rng):
    v = ex[field]
    v = as_text(v) if isinstance(v, (bytes, np.bytes_)) else v
    if names:
      if v not in names:
        raise UserError(f'label {v!r} in column {field!r} is not one of {names}')
      out = names.index(v)
    else:
      out = float(v) if dtype == 'float' else int(v)
    return {**ex, 'label': np.float32(out) if dtype == 'float' else np.int32(out)}
  return op
