"""Text ops for input.pp_train / pp_eval (stage 4): tokenize (any tokenizer: BERT's or GPT-2's),
mlm_mask (BERT's dynamic masking, `mask_tokens`), label. Registered in ops.OPS on import."""
import functools

import numpy as np

from ftjax.data.ops import register
from ftjax.data.sources import as_text
from ftjax.data.tokenizers import SPECIALS, pad_token, special_ids
from ftjax.errors import UserError


@functools.lru_cache(maxsize=8)
def _fixed_length(tok_json: str, max_len: int):
  """A copy of the tokenizer that pads (on the right, with pad_token's) and truncates to max_len:
  encode() is then thread-safe."""
  import tokenizers
  t = tokenizers.Tokenizer.from_str(tok_json)
  token, pad_id = pad_token(t)
  t.enable_truncation(max_len)
  t.enable_padding(direction='right', length=max_len, pad_id=pad_id, pad_token=token)
  return t


@register
def tokenize(max_len=128, fields=('text',), tok=None):
  """Text field(s) -> input_ids / attention_mask / token_type_ids of max_len (two fields: a pair), padded
  on the right: a GPT-2 model reads its last token where attention_mask ends."""
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
