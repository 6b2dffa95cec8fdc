"""Causal-LM data path, task and evaluator: byte-level BPE (trained, GPT-2 files), EOS-joined blocks
against a plain-Python reference, streamed resume through JSON, one global order for any process
count, doc_mask segments, the shifted loss and the perplexity / unigram evaluator against hand
computations. A tiny embedding + linear model stands in for GPT-2."""
import json
import math
import os
import types

import grain
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from ftjax import data, defaults, evals, parallel, tasks
from ftjax.data import ops, text, tokenizers
from ftjax.errors import UserError

WORDS = 'the cat sat on a mat while dogs ran far away from home and birds sang songs'.split()


def _doc(i):
  return ' '.join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(1 + (i * 5) % 13))


TRAIN = [_doc(i) for i in range(40)] + ['caf\u00e9 na\u00efve \u2713', '']
VALID = [_doc(100 + i) for i in range(9)]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp('causal')
  for split, docs in (('train', TRAIN), ('validation', VALID)):
    (root / f'{split}.jsonl').write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
  tok = tokenizers.train_bpe(TRAIN * 3, 320, str(root / 'bpe'))
  return types.SimpleNamespace(root=root, path=str(root / '{split}.jsonl'), tok=tok, tok_dir=str(root / 'bpe'))


def input_cfg(corpus, **kw):
  c = ConfigDict(dict(dataset=corpus.path, data_dir='', train_split='train', batch_size=4, tokenizer=corpus.tok_dir,
                      pp_train='', pp_eval='', num_threads=1, prefetch=1, text_field='text', max_len=8, pack=False,
                      nsp=False, causal_pack=True, doc_mask=False, block_shuffle=0))
  c.update(kw)
  return c


def reference_blocks(docs, tok, max_len):
  """Plain Python: each document's tokens + EOS, joined, cut every max_len; segment = the document's
  rank among those in the block (from 1); the last block padded (mask 0, segment 0)."""
  eos = tok.token_to_id('<|endoftext|>')
  stream, owner = [], []
  for k, d in enumerate(docs):
    ids = tok.encode(d, add_special_tokens=False).ids + [eos]
    stream += ids
    owner += [k] * len(ids)
  blocks = []
  for lo in range(0, len(stream), max_len):
    ids, own = stream[lo:lo + max_len], owner[lo:lo + max_len]
    order = sorted(set(own))
    seg = [order.index(o) + 1 for o in own]
    pad = max_len - len(ids)
    blocks.append(dict(input_ids=ids + [eos] * pad, attention_mask=[1] * len(ids) + [0] * pad, segment_ids=seg + [0] * pad))
  return blocks


# ---- tokenizer ------------------------------------------------------------------------------------
def test_bpe_trains_round_trips_and_is_cached_by_spec(corpus, tmp_path, capsys):
  tok = corpus.tok
  assert 257 < tok.get_vocab_size() <= 320 and tok.token_to_id('<|endoftext|>') == 0
  for s in ['the cat sat', 'unseen w0rds: \u00fcber \u65e5\u672c \U0001f600\ttabs\n  spaces', 'caf\u00e9']:
    assert tok.decode(tok.encode(s).ids) == s                 # byte-level: any text round-trips
  assert tok.encode('a<|endoftext|>b').ids[1] == 0 and len(tok.encode('<|endoftext|>').ids) == 1
  assert len(tok.encode('the cat sat on a mat').ids) < len('the cat sat on a mat')    # merges learnt
  # input.tokenizer='bpe:N': trained once into data_dir/ftjax_tokenizers, then reused.
  cfg = input_cfg(corpus, data_dir=str(tmp_path), tokenizer='bpe:300')
  path = tokenizers.tokenizer_path(cfg)
  assert path == os.path.join(str(tmp_path), 'ftjax_tokenizers', f'{corpus.path.replace("/", "_")}-train-bpe-300')
  assert {'tokenizer.json', 'vocab.json', 'merges.txt'} <= set(os.listdir(path))
  mtime = os.path.getmtime(os.path.join(path, 'tokenizer.json'))
  assert tokenizers.tokenizer_path(cfg) == path and os.path.getmtime(os.path.join(path, 'tokenizer.json')) == mtime
  loaded = data.tokenizer(cfg)
  assert loaded.decode(loaded.encode('far away').ids) == 'far away' and loaded.token_to_id('<|endoftext|>') == 0
  with pytest.raises(UserError, match='needs more than 257'):
    tokenizers.train_bpe(TRAIN, 200, str(tmp_path / 'small'))
  with pytest.raises(UserError, match=r"expected bpe:<vocabulary size>"):
    tokenizers.tokenizer_path(input_cfg(corpus, tokenizer='bpe:many'))
  # By hand: python -m ftjax.data.text --kind=bpe
  text.main([f'--corpus={corpus.root / "train.jsonl"}', '--kind=bpe', '--vocab_size=280', f'--out={tmp_path / "cli"}'])
  assert 'byte-level BPE vocabulary' in capsys.readouterr().out
  cli = tokenizers.load_tokenizer(str(tmp_path / 'cli'))
  assert cli.get_vocab_size() <= 280 and cli.decode(cli.encode('dogs sang').ids) == 'dogs sang'


def test_gpt2_vocab_and_merges_and_tokenizer_json_load(corpus, tmp_path):
  # GPT-2's files: byte-level symbols ('\u0120' = a space), merges in rank order, <|endoftext|> last.
  vocab = {'h': 0, 'e': 1, 'l': 2, 'o': 3, '\u0120': 4, 'w': 5, 'r': 6, 'd': 7, 'he': 8, 'll': 9, 'hell': 10,
           'hello': 11, '\u0120w': 12, '<|endoftext|>': 13}
  (tmp_path / 'vocab.json').write_text(json.dumps(vocab))
  (tmp_path / 'merges.txt').write_text('#version: 0.2\nh e\nl l\nhe ll\nhell o\n\u0120 w\n')
  tok = tokenizers.load_tokenizer(str(tmp_path))
  assert tok.encode('hello world').ids == [11, 12, 3, 6, 2, 7]
  assert tok.encode('hello<|endoftext|>').ids == [11, 13]       # the end-of-text token is special, not bytes
  assert tokenizers.eos_id(tok) == 13 and tokenizers.pad_token(tok) == ('<|endoftext|>', 13)
  assert tok.decode([11, 12, 3, 6, 2, 7]) == 'hello world'
  # A tokenizer.json, as a file and in a directory.
  assert tokenizers.load_tokenizer(os.path.join(corpus.tok_dir, 'tokenizer.json')).encode('the cat').ids == \
      corpus.tok.encode('the cat').ids
  # BERT's ops still say which tokens they miss; tokenize pads on the right with <|endoftext|>.
  with pytest.raises(UserError, match=r'has no \[PAD\] \[UNK\] \[CLS\] \[SEP\] \[MASK\] token'):
    ops.parse('mlm_mask', tok=tok)
  out = ops.parse('tokenize(max_len=5)', tok=tok)({'text': 'hello w'}, None)
  assert out['input_ids'].tolist() == [11, 12, 13, 13, 13] and out['attention_mask'].tolist() == [1, 1, 0, 0, 0]
  assert ops.parse('tokenize(max_len=3)', tok=tok)({'text': 'hello world'}, None)['input_ids'].tolist() == [11, 12, 3]
  with pytest.raises(UserError, match='needs input.tokenizer'):
    data.train_iterator(input_cfg(corpus, tokenizer=''), seed=0)
  with pytest.raises(UserError, match='exclude each other'):
    data.train_iterator(input_cfg(corpus, pack=True), seed=0)


# ---- blocks ---------------------------------------------------------------------------------------
def test_eval_blocks_are_the_eos_joined_stream_cut_at_max_len(corpus):
  ref = reference_blocks(VALID, corpus.tok, 8)
  assert ref[-1]['attention_mask'][-1] == 0        # the corpus leaves a short last block: padding is tested
  for doc_mask in (False, True):
    cfg = input_cfg(corpus, doc_mask=doc_mask)
    # Two processes: process p holds rows [3p, 3p+3) of each batch of 6; the same batch count on both.
    per = [list(data.eval_batches(cfg, 'validation', '', 6, process_index=p, process_count=2)) for p in range(2)]
    assert len(per[0]) == len(per[1]) == math.ceil(len(ref) / 6)
    rows = [{k: b[k][i].tolist() for k in b if k != '_mask'}
            for pair in zip(*per) for b in pair for i in range(3) if b['_mask'][i]]
    assert rows == [{k: v for k, v in r.items() if doc_mask or k != 'segment_ids'} for r in ref]


def test_train_stream_is_the_shuffled_documents_joined_and_cut(corpus):
  """One epoch and a bit: documents in grain's per-epoch shuffled order, EOS-joined, cut at max_len,
  continuing across the epoch boundary; with doc_mask, segments restart at 1 in each block."""
  cfg = input_cfg(corpus, doc_mask=True, batch_size=4)
  it, n_blocks = data.train_iterator(cfg, seed=3)
  order = grain.MapDataset.range(len(TRAIN)).shuffle(seed=3).repeat(None)
  docs = [TRAIN[order[i]] for i in range(3 * len(TRAIN))]
  ref = reference_blocks(docs, corpus.tok, 8)
  n_tokens = sum(len(corpus.tok.encode(d).ids) + 1 for d in TRAIN)
  assert n_blocks == n_tokens // 8
  got = [next(it) for _ in range(math.ceil(1.5 * n_blocks / 4))]
  rows = [{k: b[k][i].tolist() for k in b} for b in got for i in range(4)]
  assert rows == ref[:len(rows)]
  assert all(b['attention_mask'].all() and b['input_ids'].dtype == np.int32 for b in got)
  assert {'input_ids', 'attention_mask', 'segment_ids'} == set(got[0])


def test_resume_through_json_and_one_global_order_for_any_process_count(corpus):
  cfg = input_cfg(corpus, batch_size=4, block_shuffle=5, doc_mask=True)
  it, _ = data.train_iterator(cfg, seed=0)
  states, batches = [], []
  for _ in range(40):                         # past an epoch: states mid-document, mid-window, at its edges
    states.append(json.loads(json.dumps(it.get_state())))
    batches.append(next(it))
  shuffled = reference_blocks([TRAIN[i] for i in grain.MapDataset.range(len(TRAIN)).shuffle(seed=0)], corpus.tok, 8)
  first = [r['input_ids'] for r in shuffled[:20]]
  seen = [row.tolist() for b in batches[:5] for row in b['input_ids']]
  assert seen != first and sorted(map(str, seen)) == sorted(map(str, first))   # blocks shuffled in windows of 5
  for k in (1, 13, 31):
    again, _ = data.train_iterator(cfg, seed=0)
    again.set_state(states[k])
    for b in batches[k:k + 6]:
      nxt = next(again)
      for key in b:
        np.testing.assert_array_equal(nxt[key], b[key])
  # Two processes (process p keeps rows [2p, 2p+2)) see the one-process batches, resumed from its state too.
  two = [data.train_iterator(cfg, seed=0, process_index=p, process_count=2)[0] for p in range(2)]
  for k, b in enumerate(batches[:12]):
    if k == 6:
      for p in range(2):
        two[p] = data.train_iterator(cfg, seed=0, process_index=p, process_count=2)[0]
        two[p].set_state(states[6])
    local = [next(t) for t in two]
    for key in b:
      np.testing.assert_array_equal(np.concatenate([x[key] for x in local]), b[key])


# ---- task -----------------------------------------------------------------------------------------
class TinyLM(nnx.Module):
  """GPT-2's call signature; the logits depend on the token only (what the task does with them is tested)."""

  def __init__(self, vocab, rngs):
    self.wte = nnx.Embed(vocab, 8, rngs=rngs)
    self.head = nnx.Linear(8, vocab, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, segment_ids=None, rngs=None):
    return types.SimpleNamespace(logits=self.head(self.wte(input_ids)))

  def embed(self, input_ids, attention_mask=None, rngs=None):
    return self.wte(input_ids).mean(1)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def reference_loss(logits, batch):
  """Loops: position t predicts token t+1 when both are real, in one document, and t+1 is a target."""
  logp = _log_softmax(np.asarray(logits, np.float64))
  ids, total, n, right = batch['input_ids'], 0.0, 0, 0
  B, T = ids.shape
  for b in range(B):
    for t in range(T - 1):
      if not (batch['attention_mask'][b, t] and batch['attention_mask'][b, t + 1]):
        continue
      if 'segment_ids' in batch and batch['segment_ids'][b, t] != batch['segment_ids'][b, t + 1]:
        continue
      if 'loss_mask' in batch and not batch['loss_mask'][b, t + 1]:
        continue
      total -= logp[b, t, ids[b, t + 1]]
      right += int(np.argmax(logits[b, t]) == ids[b, t + 1])
      n += 1
  return total, n, right


def test_causal_lm_loss_matches_a_hand_written_reference():
  model = TinyLM(11, nnx.Rngs(0))
  task = tasks.build(ConfigDict(dict(name='causal_lm')))
  ids = np.random.default_rng(0).integers(0, 11, (3, 7)).astype(np.int32)
  base = dict(input_ids=ids, attention_mask=np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 7], np.int32))
  seg = np.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 2, 2, 0, 0, 0], [1] * 7], np.int32)
  loss_mask = np.array([[1] * 7, [1] * 7, [0, 0, 0, 1, 1, 1, 1]], np.int32)
  logits = np.asarray(model(ids).logits)
  results = []
  for extra in ({}, {'segment_ids': seg}, {'segment_ids': seg, 'loss_mask': loss_mask}):
    batch = {**base, **extra}
    total, n, right = reference_loss(logits, batch)
    loss, metrics = task.loss(model, batch)
    np.testing.assert_allclose(loss, total / n, rtol=1e-5)
    np.testing.assert_allclose(metrics['perplexity'], math.exp(total / n), rtol=1e-5)
    np.testing.assert_allclose(metrics['accuracy'], right / n, rtol=1e-6)
    out = task.predict(model, batch)
    assert out['loss'].shape == out['weight'].shape == out['pred'].shape == (3, 6)
    assert float(out['weight'].sum()) == n
    np.testing.assert_allclose(float((out['loss'] * out['weight']).sum()), total, rtol=1e-5)
    np.testing.assert_array_equal(out['label'], ids[:, 1:])
    results.append(n)
  assert results == [6 + 3 + 6, 5 + 2 + 6, 5 + 2 + 4]      # each mask drops the predictions it should
  # The model gets input_ids, attention_mask, segment_ids, positionally and in that order.
  seen = []
  spy = lambda *args, rngs=None: seen.append(args) or model(*args)
  task.loss(spy, {**base, 'segment_ids': seg})
  task.loss(spy, base)
  assert [len(a) for a in seen] == [3, 2] and seen[0][1] is base['attention_mask'] and seen[0][2] is seg
  assert task.features(model, {**base, 'segment_ids': seg}).shape == (3, 8)


# ---- evaluator ------------------------------------------------------------------------------------
def test_perplexity_counts_every_token_once_and_the_unigram_baseline(corpus):
  config = defaults.base_config()
  config.input.update(dataset=corpus.path, tokenizer=corpus.tok_dir, causal_pack=True, doc_mask=True, max_len=8)
  vocab = corpus.tok.get_vocab_size()
  model = TinyLM(vocab, nnx.Rngs(1))
  task = tasks.build(ConfigDict(dict(name='causal_lm')))
  ev = evals.build('ppl', dict(type='perplexity', split='validation', batch_size=5), config=config,
                   predict_fn=lambda state, batch: task.predict(model, batch), embed_fn=None,
                   mesh=parallel.make_mesh((1,), ('data',)))
  ref = reference_blocks(VALID, corpus.tok, 8)
  assert len(ref) % 5                              # the last eval batch is padded
  batch = {k: np.array([r[k] for r in ref], np.int32) for k in ref[0]}
  total, n, right = reference_loss(np.asarray(model(batch['input_ids']).logits), batch)
  # Unigram: add-one smoothed frequencies of the train split's stream (documents + EOS), on the same targets.
  eos = corpus.tok.token_to_id('<|endoftext|>')
  counts = np.zeros(vocab)
  for d in TRAIN:
    for t in corpus.tok.encode(d).ids + [eos]:
      counts[t] += 1
  uni = 0.0
  for r in ref:
    for t in range(7):
      if r['attention_mask'][t + 1] and r['segment_ids'][t] == r['segment_ids'][t + 1]:
        uni -= math.log((counts[r['input_ids'][t + 1]] + 1) / (counts.sum() + vocab))
  got = ev(None)
  assert got['ppl/tokens'] == n
  assert got.keys() == {'ppl/perplexity', 'ppl/loss', 'ppl/accuracy', 'ppl/tokens', 'ppl/unigram_perplexity'}
  np.testing.assert_allclose(got['ppl/loss'], total / n, rtol=1e-5)
  np.testing.assert_allclose(got['ppl/perplexity'], math.exp(total / n), rtol=1e-5)
  np.testing.assert_allclose(got['ppl/accuracy'], right / n, rtol=1e-6)
  np.testing.assert_allclose(got['ppl/unigram_perplexity'], math.exp(uni / n), rtol=1e-9)
  assert got['ppl/unigram_perplexity'] < vocab      # the frequencies say something about the text
  assert defaults.eval_config(type='perplexity').unigram is True
