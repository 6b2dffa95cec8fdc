"""Stage 2, the tokenizer (input.tokenizer): HF `tokenizers`, loaded from a model directory's
tokenizer.json, vocab.txt (BERT WordPiece) or vocab.json + merges.txt (GPT-2 byte-level BPE), or
trained on the train split once: `train:<vocab size>` (WordPiece, BERT's specials) or `bpe:<vocab
size>` (byte-level BPE with GPT-2's `<|endoftext|>`).

Special tokens are checked where they are used, not at load: BERT's packing and mlm_mask need
[PAD] [UNK] [CLS] [SEP] [MASK] (`special_ids`), causal packing an end-of-document token (`eos_id`),
the tokenize op a padding token (`pad_token`). A GPT-2 tokenizer has no pad token: it pads with
<|endoftext|>, as GPT-2 does, and attention_mask (never the id) tells padding from text.
"""
import functools
import os

from ftjax.data.sources import as_text, get_source, lock
from ftjax.errors import UserError, brief, read_text

SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
EOS = '<|endoftext|>'
EOS_CANDIDATES = (EOS, '</s>', '<eos>', '[SEP]')    # the first one the vocabulary has ends a document
PAD_CANDIDATES = ('[PAD]', '<pad>')                 # else the end-of-document token pads
KINDS = {'train': 'WordPiece', 'bpe': 'byte-level BPE'}


def tokenizer(cfg):
  """input.tokenizer: a model directory / tokenizer.json / Hugging Face Hub id (hub.resolve), or
  'train:<vocab size>' (WordPiece) or 'bpe:<vocab size>' (byte-level BPE) trained on the train split once
  (cached beside the TFDS data). '' = none (image data)."""
  spec = tokenizer_path(cfg)
  if not spec:
    return None
  return load_tokenizer(spec)


def tokenizer_path(cfg) -> str:
  """input.tokenizer resolved to a path ('train:N' / 'bpe:N' train the vocabulary the first time)."""
  if not cfg.get('tokenizer'):
    return ''
  spec = cfg.tokenizer
  kind = spec.split(':', 1)[0]
  if ':' in spec and kind in KINDS:
    import tensorflow_datasets as tfds
    try:
      size = int(spec.split(':', 1)[1])
    except ValueError:
      raise UserError(f'input.tokenizer={spec!r}: expected {kind}:<vocabulary size>, e.g. {kind}:8000') from None
    root = os.path.join(cfg.data_dir or str(tfds.core.constants.DATA_DIR), 'ftjax_tokenizers')
    out = os.path.join(root, f'{cfg.dataset.replace("/", "_")}-{cfg.train_split}-{"bpe-" if kind == "bpe" else ""}{size}')
    with lock(out + '.lock'):
      if not os.path.exists(os.path.join(out, 'tokenizer.json')):
        src = get_source(cfg.dataset, cfg.train_split, cfg.data_dir)
        print(f'training a {size}-token {KINDS[kind]} vocabulary on {cfg.dataset} -> {out}', flush=True)
        train = train_bpe if kind == 'bpe' else train_wordpiece
        train((as_text(src[i][cfg.text_field]) for i in range(len(src))), size, out)
    spec = out
  return spec


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str):
  """A `tokenizers.Tokenizer` from tokenizer.json (file or in a directory), a directory's vocab.txt
  (WordPiece) or vocab.json + merges.txt (byte-level BPE). An unreadable, empty, non-UTF-8 or
  malformed file is a UserError naming it."""
  import tokenizers
  from ftjax.hub import resolve
  path = resolve(path)
  tj = os.path.join(path, 'tokenizer.json') if os.path.isdir(path) else path
  vocab = os.path.join(path, 'vocab.txt') if os.path.isdir(path) else None
  bpe = [os.path.join(path, f) for f in ('vocab.json', 'merges.txt')] if os.path.isdir(path) else []
  if tj.endswith('.json') and os.path.exists(tj):
    expected = 'the tokenizer.json that `tokenizers` / transformers write'
    text = read_text(tj, expected)
    try:
      tok = tokenizers.Tokenizer.from_str(text)
    except Exception as e:       # tokenizers raises a bare Exception for bad JSON and missing fields alike
      raise UserError(f'{tj}: not a readable tokenizer ({brief(e)}); expected {expected}') from None
  elif vocab and os.path.exists(vocab):
    expected = 'a WordPiece vocab.txt: one token per line, [PAD] [UNK] [CLS] [SEP] [MASK] among them'
    read_text(vocab, expected)      # empty or not UTF-8: said here, not by tokenizers
    lower = True
    cfg = os.path.join(path, 'tokenizer_config.json')
    if os.path.exists(cfg):
      from ftjax.hub import read_json
      lower = read_json(cfg, 'a tokenizer_config.json (a JSON object)').get('do_lower_case', True)
      if not isinstance(lower, bool):
        raise UserError(f'{cfg}: do_lower_case={lower!r}; expected true or false')
    try:
      tok = tokenizers.BertWordPieceTokenizer(vocab, lowercase=lower)._tokenizer
    except Exception as e:
      raise UserError(f'{vocab}: not a readable vocabulary ({brief(e)}); expected {expected}') from None
  elif bpe and all(os.path.exists(f) for f in bpe):
    expected = "GPT-2's vocab.json (token -> id) and merges.txt (one merge a line)"
    for f in bpe:
      read_text(f, expected)
    try:
      tok = tokenizers.ByteLevelBPETokenizer(*bpe)._tokenizer
    except Exception as e:
      raise UserError(f'{path}: vocab.json + merges.txt are not a readable byte-level BPE ({brief(e)}); '
                      f'expected {expected}') from None
    if tok.token_to_id(EOS) is not None:    # in GPT-2's vocab.json as a plain entry: make it special, as transformers does
      tok.add_special_tokens([EOS])
  else:
    raise UserError(f'no tokenizer at {path!r}: expected tokenizer.json, vocab.txt, or vocab.json + merges.txt')
  tok.no_padding()
  tok.no_truncation()
  return tok


def special_ids(tok) -> dict:
  """BERT's special tokens -> ids, for what needs all of them (MLM packing, mlm_mask)."""
  ids = {s: tok.token_to_id(s) for s in SPECIALS}
  missing = [s for s, i in ids.items() if i is None]
  if missing:
    raise UserError(f'the tokenizer (input.tokenizer) has no {" ".join(missing)} token; BERT-style packing '
                    f'(input.pack) and mlm_mask need BERT\'s special tokens ({" ".join(SPECIALS)}); for a GPT-2 '
                    'tokenizer use input.causal_pack and the causal_lm task')
  return ids


def eos_id(tok) -> int:
  """The token that ends each document in a causal-LM stream."""
  for s in EOS_CANDIDATES:
    if tok.token_to_id(s) is not None:
      return tok.token_to_id(s)
  raise UserError(f'the tokenizer (input.tokenizer) has no end-of-document token (one of {" ".join(EOS_CANDIDATES)}); '
                  'causal packing joins documents with it')


def pad_token(tok) -> tuple[str, int]:
  """(token, id) that pads sequences: [PAD] or <pad> where the vocabulary has one, else the
  end-of-document token (GPT-2's convention; attention_mask marks the padding)."""
  for s in PAD_CANDIDATES + EOS_CANDIDATES:
    if tok.token_to_id(s) is not None:
      return s, tok.token_to_id(s)
  raise UserError(f'the tokenizer (input.tokenizer) has no padding token (one of '
                  f'{" ".join(PAD_CANDIDATES + EOS_CANDIDATES)})')


def check_vocab(tok, vocab_size: int, where: str):
  n = tok.get_vocab_size()
  if n > vocab_size:
    raise UserError(f'{where}: the tokenizer has {n} tokens but the model\'s vocab_size is {vocab_size}; '
                    'use the model\'s own tokenizer or set model.vocab_size')


def _save(tok, out_dir):
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir + '.tmp.json'))
  os.replace(out_dir + '.tmp.json', os.path.join(out_dir, 'tokenizer.json'))
  tok.save_model(out_dir)
  return load_tokenizer.__wrapped__(out_dir)


def train_wordpiece(texts, vocab_size: int, out_dir: str, lowercase=True):
  """Trains a BERT WordPiece vocabulary; writes tokenizer.json and vocab.txt into out_dir."""
  import tokenizers
  tok = tokenizers.BertWordPieceTokenizer(lowercase=lowercase)
  tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIALS),
                          show_progress=False)
  return _save(tok, out_dir)


def train_bpe(texts, vocab_size: int, out_dir: str):
  """Trains a GPT-2-style byte-level BPE (all 256 bytes in the alphabet, so any text round-trips)
  with <|endoftext|> as its one special token (id 0); writes tokenizer.json, vocab.json and merges.txt."""
  import tokenizers
  if vocab_size <= 257:
    raise UserError(f'a byte-level BPE vocabulary of {vocab_size} tokens: it needs more than 257 (the 256 bytes and '
                    '<|endoftext|>) to learn any merge')
  tok = tokenizers.ByteLevelBPETokenizer()
  tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
  return _save(tok, out_dir)
