"""`python -m ftjax.data.text --corpus=ftjax_pydoc --vocab_size=8000 --out=DIR [--kind=bpe]`: trains a
WordPiece (BERT) or byte-level BPE (GPT-2) vocabulary (tokenizers.py) by hand. A module the package
does not import, so `-m` runs it once."""
from ftjax.data.sources import as_text, get_source
from ftjax.data.tokenizers import train_bpe, train_wordpiece
from ftjax.errors import UserError

KINDS = {'wordpiece': (train_wordpiece, 'WordPiece'), 'bpe': (train_bpe, 'byte-level BPE')}


def main(argv=None):
  import argparse
  p = argparse.ArgumentParser(description='Train a WordPiece or byte-level BPE vocabulary on a corpus.')
  p.add_argument('--corpus', required=True, help='TFDS name (e.g. ftjax_pydoc), .txt, .jsonl or .csv file')
  p.add_argument('--split', default='train')
  p.add_argument('--text_field', default='text')
  p.add_argument('--vocab_size', type=int, default=8000)
  p.add_argument('--kind', choices=sorted(KINDS), default='wordpiece',
                 help="wordpiece: BERT's [PAD] [UNK] [CLS] [SEP] [MASK]; bpe: GPT-2's <|endoftext|>")
  p.add_argument('--out', required=True)
  a = p.parse_args(argv)
  train, name = KINDS[a.kind]
  try:
    src = get_source(a.corpus, a.split)
    if len(src) and a.text_field not in src[0]:
      raise UserError(f'{a.corpus}: no field {a.text_field!r} (it has {", ".join(map(repr, sorted(src[0])))}); '
                      'name it with --text_field')
    tok = train((as_text(src[i][a.text_field]) for i in range(len(src))), a.vocab_size, a.out)
  except UserError as e:
    raise SystemExit(f'ftjax: error: {e}') from None
  print(f'wrote a {tok.get_vocab_size()}-token {name} vocabulary to {a.out}')


if __name__ == '__main__':
  main()
