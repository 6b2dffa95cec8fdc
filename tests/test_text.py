"""Text data: masking statistics and determinism, packing within documents, corpus edge cases,
tokenizer / model vocabulary checks, the vocabulary command line."""
import json

import numpy as np
import pytest
from ml_collections import ConfigDict

from ftjax import data
from ftjax.data import packing, text, text_ops, tokenizers
from ftjax.errors import UserError

CORPUS = ['the cat sat on the mat . ' * 3, 'a dog ran in the park and the dog barked loudly', '',
          'functions return values ; classes define objects and methods ' * 2]


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
  return tokenizers.train_wordpiece(CORPUS * 20, 120, str(tmp_path_factory.mktemp('tok')))


def test_masking_rate_and_80_10_10(tok):
  sp = tokenizers.special_ids(tok)
  rng = np.random.default_rng(0)
  vocab = 1000
  n_seq, L = 400, 128
  counts = dict(chosen=0, candidates=0, mask=0, same=0, other=0)
  for _ in range(n_seq):
    ids = rng.integers(len(tokenizers.SPECIALS), vocab, L)
    ids[0], ids[100], ids[101:] = sp['[CLS]'], sp['[SEP]'], sp['[PAD]']
    masked, pos, labels, w = text_ops.mask_tokens(ids, rng, vocab_size=vocab, special=sp, rate=0.15,
                                                  max_predictions=40)
    chosen = pos[w > 0]
    assert not np.isin(ids[chosen], list(sp.values())).any()          # never a special token or padding
    np.testing.assert_array_equal(labels[w > 0], ids[chosen])
    unchosen = np.setdiff1d(np.arange(L), chosen)
    np.testing.assert_array_equal(masked[unchosen], ids[unchosen])     # nothing else changes
    counts['candidates'] += 99
    counts['chosen'] += len(chosen)
    counts['mask'] += int((masked[chosen] == sp['[MASK]']).sum())
    counts['same'] += int((masked[chosen] == ids[chosen]).sum())
    counts['other'] += int(((masked[chosen] != ids[chosen]) & (masked[chosen] != sp['[MASK]'])).sum())
  n = counts['chosen']
  assert abs(n / counts['candidates'] - 0.15) < 0.005
  # Binomial tolerances (> 4 sigma); random replacements equal to the original count as 'same'.
  assert abs(counts['mask'] / n - 0.8) < 4 * np.sqrt(0.16 / n)
  assert abs(counts['other'] / n - 0.1 * (1 - 1 / vocab)) < 4 * np.sqrt(0.09 / n)
  assert abs(counts['same'] / n - 0.1) < 4 * np.sqrt(0.09 / n) + 0.001


def test_same_seed_same_masks_and_whole_words(tok):
  sp = tokenizers.special_ids(tok)
  ids = np.asarray(tok.encode('[CLS] functions return values ; classes define objects [SEP]').ids)
  a = text_ops.mask_tokens(ids, np.random.default_rng(5), vocab_size=120, special=sp)
  b = text_ops.mask_tokens(ids, np.random.default_rng(5), vocab_size=120, special=sp)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  vocab = tok.get_vocab()
  cont = np.zeros(len(vocab), bool)
  for piece, i in vocab.items():
    cont[i] = piece.startswith('##')
  long_ids = np.asarray(tok.encode(' '.join(['classes define objects'] * 10)).ids)
  for seed in range(20):
    _, pos, _, w = text_ops.mask_tokens(long_ids, np.random.default_rng(seed), vocab_size=120, special=sp,
                                        rate=0.3, whole_word=cont[long_ids])
    chosen = set(pos[w > 0].tolist())
    for p in chosen:                  # a chosen continuation piece's whole word is chosen
      if cont[long_ids[p]]:
        assert p - 1 in chosen


def test_packing_never_spans_documents(tok):
  docs = ['alpha ' * 50, 'beta ' * 7, '', 'gamma ' * 20]
  t = tokenizers.train_wordpiece(docs * 5, 60, '/tmp/ftjax-pack-tok')
  packed = packing.pack_documents(docs, t, max_len=16)
  sp = tokenizers.special_ids(t)
  words = {t.token_to_id(w) for w in ('alpha', 'beta', 'gamma')}
  for row in packed['input_ids']:
    body = [x for x in row if x not in sp.values()]
    assert row[0] == sp['[CLS]'] and sp['[SEP]'] in row
    assert len(set(body) & words) == 1                    # one document per sequence
  assert len(packed['input_ids']) == 4 + 1 + 2            # 50/14 -> 4, 7 -> 1, 20 -> 2 chunks
  nsp = packing.pack_documents(docs * 3, t, max_len=16, nsp=True, seed=0)
  assert set(np.unique(nsp['next_sentence_label'])) == {0, 1}
  assert (nsp['token_type_ids'].max(axis=1) == 1).all()


def test_corpus_files_with_bad_bytes_empty_and_long_lines(tmp_path, tok):
  path = tmp_path / 'corpus.txt'
  path.write_bytes(b'first document\n\n\xff\xfe with bad bytes\n\n')
  with pytest.raises(UserError, match=r'corpus.txt:3: not UTF-8 text'):    # an error, not mojibake
    data.get_source(str(path), 'train')
  path.write_bytes(b'first document \xc3\xa9 in UTF-8\n\n\n\n' + b'word ' * 2000 + b'\n\n   \n\nlast one\n')
  src = data.get_source(str(path), 'train')
  assert len(src) == 3 and '\u00e9' in src[0]['text']
  cfg = ConfigDict(dict(dataset=str(path), data_dir='', train_split='train', batch_size=4, tokenizer='',
                        pp_train='', pp_eval='', num_threads=1, prefetch=1, text_field='text', max_len=32,
                        pack=True, nsp=False))
  packed = packing.pack_documents([src[i]['text'] for i in range(3)], tok, 32)
  assert packed['input_ids'].shape[1] == 32 and len(packed['input_ids']) > 60   # the long line is chunked
  (tmp_path / 'bad.jsonl').write_text('{"text": "ok"}\n{not json}\n')
  with pytest.raises(UserError, match='bad.jsonl:2: not valid JSON'):
    data.get_source(str(tmp_path / 'bad.jsonl'), 'train')
  (tmp_path / 'empty.txt').write_text('\n\n  \n')
  with pytest.raises(UserError, match='no documents'):
    data.get_source(str(tmp_path / 'empty.txt'), 'train')
  del cfg


def test_train_pipeline_masks_anew_each_epoch_deterministically(tmp_path, tok):
  path = tmp_path / 'c.jsonl'
  path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in CORPUS if d))
  tok.save(str(tmp_path / 'tokenizer.json'))
  cfg = ConfigDict(dict(dataset=str(path), data_dir='', train_split='train', batch_size=3,
                        tokenizer=str(tmp_path / 'tokenizer.json'), pp_train='mlm_mask(rate=0.3, max_predictions=6)',
                        pp_eval='', num_threads=1, prefetch=1, text_field='text', max_len=16, pack=True, nsp=False))
  it, n = data.train_iterator(cfg, seed=0)
  epochs = [next(it) for _ in range(4)]
  again, _ = data.train_iterator(cfg, seed=0)
  for b in epochs:
    np.testing.assert_array_equal(b['input_ids'], next(again)['input_ids'])
  assert set(epochs[0]) >= {'input_ids', 'attention_mask', 'masked_positions', 'masked_ids', 'masked_weights'}
  # Each packed sequence comes back in later epochs with different masks.
  seqs = {}
  for b in epochs + [next(it) for _ in range(8)]:
    for ids, lab, pos in zip(b['input_ids'], b['masked_ids'], b['masked_positions']):
      orig = ids.copy()
      orig[pos] = np.where(lab > 0, lab, orig[pos])
      seqs.setdefault(orig.tobytes(), set()).add(pos.tobytes())
  assert any(len(v) > 1 for v in seqs.values())


def test_vocabulary_command_line(tmp_path, capsys):
  """`python -m ftjax.data.text` on a named field of a local file; a missing field is one error line."""
  path = tmp_path / 'c.jsonl'
  path.write_text(''.join(json.dumps({'body': d}) + '\n' for d in CORPUS if d))
  text.main([f'--corpus={path}', '--text_field=body', '--vocab_size=60', f'--out={tmp_path / "vocab"}'])
  assert 'WordPiece vocabulary' in capsys.readouterr().out
  assert 0 < tokenizers.load_tokenizer(str(tmp_path / 'vocab')).get_vocab_size() <= 60
  with pytest.raises(SystemExit, match=r"ftjax: error: .*c.jsonl: no field 'text' \(it has 'body'\)"):
    text.main([f'--corpus={path}', '--vocab_size=60', f'--out={tmp_path / "other"}'])


def test_tokenizer_model_vocab_mismatch(tok):
  tokenizers.check_vocab(tok, 30522, 'x')
  with pytest.raises(UserError, match=f'the tokenizer has {tok.get_vocab_size()} tokens but the model'):
    tokenizers.check_vocab(tok, 100, 'input.tokenizer')


def test_local_csv_with_named_columns_and_string_labels(tmp_path, tok):
  path = tmp_path / 'reviews.csv'
  path.write_text('review,stars,verdict\n"the cat sat",4,good\n"the dog barked loudly",1,bad\n')
  tok.save(str(tmp_path / 'tokenizer.json'))
  cfg = ConfigDict(dict(dataset=str(path), data_dir='', train_split='train', batch_size=2,
                        tokenizer=str(tmp_path / 'tokenizer.json'),
                        pp_train='tokenize(max_len=8, fields="review")|label("verdict", names=("bad", "good"))',
                        pp_eval='', num_threads=1, prefetch=1, text_field='text', max_len=8, pack=False, nsp=False))
  batch = next(data.train_iterator(cfg, seed=0)[0])
  assert sorted(batch['label'].tolist()) == [0, 1] and batch['label'].dtype == np.int32
  assert batch['input_ids'].shape == (2, 8) and 'review' not in batch and 'verdict' not in batch
  ex = {'stars': '4'}
  assert ops_parse('label("stars", dtype="float")')(ex, None)['label'] == np.float32(4.0)
  with pytest.raises(UserError, match="'meh' in column 'verdict'"):
    ops_parse('label("verdict", names=("bad", "good"))')({'verdict': 'meh'}, None)


def ops_parse(spec):
  from ftjax.data import ops
  return ops.parse(spec)
