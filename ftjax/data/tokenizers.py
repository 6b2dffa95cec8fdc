"""Stage 2, the tokenizer (input.tokenizer): HF `tokenizers` (fast WordPiece), loaded from a model
directory's tokenizer.json or vocab.txt, or trained on the train split (`train:<vocab size>`) once.
"""
import functools
import os

from ftjax.data.sources import as_text, get_source, lock
from ftjax.errors import UserError, brief, read_text

SPECIALS = ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


def tokenizer(cfg):
  """input.tokenizer: a model directory / tokenizer.json, or 'train:<vocab size>' to train a WordPiece
  vocabulary on the train split once (cached beside the TFDS data). '' = none (image data)."""
  spec = tokenizer_path(cfg)
  if not spec:
    return None
  return load_tokenizer(spec)


def tokenizer_path(cfg) -> str:
  """input.tokenizer resolved to a path ('train:N' trains the vocabulary the first time)."""
  if not cfg.get('tokenizer'):
    return ''
  spec = cfg.tokenizer
  if spec.startswith('train:'):
    import tensorflow_datasets as tfds
    size = int(spec.split(':', 1)[1])
    root = os.path.join(cfg.data_dir or str(tfds.core.constants.DATA_DIR), 'ftjax_tokenizers')
    out = os.path.join(root, f'{cfg.dataset.replace("/", "_")}-{cfg.train_split}-{size}')
    with lock(out + '.lock'):
      if not os.path.exists(os.path.join(out, 'tokenizer.json')):
        src = get_source(cfg.dataset, cfg.train_split, cfg.data_dir)
        print(f'training a {size}-token WordPiece vocabulary on {cfg.dataset} -> {out}', flush=True)
        train_wordpiece((as_text(src[i][cfg.text_field]) for i in range(len(src))), size, out)
    spec = out
  return spec


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str):
  """A `tokenizers.Tokenizer` from tokenizer.json (file or in a directory) or a directory's vocab.txt.
  An unreadable, empty, non-UTF-8 or malformed file is a UserError naming it."""
  import tokenizers
  from ftjax.hub import resolve
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
      from ftjax.hub import read_json
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
