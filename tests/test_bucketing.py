"""Length bucketing of evaluation batches: every example once, each batch cut to a multiple of the bucket past
its longest example, the same rows and widths on every process, outputs back in the split's order, and the
models' outputs on the real tokens unchanged by the padding cut away."""
import json

import jax
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from ftjax import data, evals, parallel
from ftjax.data import tokenizers
from ftjax.models import bert, gpt2

WORDS = 'the cat sat on a mat while dogs ran in parks and birds sang loudly at dawn'.split()
N, MAX_LEN, BUCKET, BATCH = 37, 32, 8, 8


@pytest.fixture(scope='module')
def text_input(tmp_path_factory):
  """A JSONL split of N sentences of 1 to 27 words (lengths shuffled), a WordPiece vocabulary trained on them."""
  root = tmp_path_factory.mktemp('bucket')
  rng = np.random.default_rng(0)
  rows = [{'text': ' '.join(rng.choice(WORDS, size=int(n))), 'label': i % 3}
          for i, n in enumerate(rng.permutation(np.arange(N) % 27 + 1))]
  (root / 'split.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  tokenizers.train_wordpiece([r['text'] for r in rows] * 5, 60, str(root / 'tok'))
  return ConfigDict(dict(dataset=str(root / 'split.jsonl'), data_dir='', train_split='train', batch_size=BATCH,
                         tokenizer=str(root / 'tok' / 'tokenizer.json'), pp_train='', num_threads=1, prefetch=1,
                         pp_eval=f'tokenize(max_len={MAX_LEN})|label("label")', text_field='text', max_len=MAX_LEN,
                         pack=False, nsp=False))


def _batches(cfg, bucket, p=0, count=1):
  return list(data.eval_batches(cfg, 'train', cfg.pp_eval, BATCH, process_index=p, process_count=count,
                                bucket=bucket))


def test_every_example_once_cut_to_its_batch_and_the_same_on_every_process(text_input):
  plain = {k: np.concatenate([b[k] for b in _batches(text_input, 0)])[:N] for k in ('input_ids', 'attention_mask')}
  lengths = plain['attention_mask'].sum(1)
  assert lengths.min() < 8 and lengths.max() > 24 and plain['input_ids'].shape[1] == MAX_LEN   # the data spread
  bucketed = _batches(text_input, BUCKET)
  assert len(bucketed) == -(-N // BATCH)
  seen = []
  for b in bucketed:
    real = b['_index'][b['_mask'] > 0]
    width = b['input_ids'].shape[1]
    assert width % BUCKET == 0 and lengths[real].max() <= width < lengths[real].max() + BUCKET
    assert b['attention_mask'].shape[1] == b['token_type_ids'].shape[1] == width
    np.testing.assert_array_equal(b['input_ids'][b['_mask'] > 0], plain['input_ids'][real, :width])
    assert not plain['attention_mask'][real, width:].any()      # only padding was cut
    seen += real.tolist()
  assert sorted(seen) == list(range(N))
  widths = [b['input_ids'].shape[1] for b in bucketed]
  assert widths == sorted(widths) and widths[0] < widths[-1] <= MAX_LEN
  halves = [_batches(text_input, BUCKET, p, 2) for p in range(2)]
  for whole, a, b in zip(bucketed, *halves):
    assert a['input_ids'].shape == b['input_ids'].shape == (BATCH // 2, whole['input_ids'].shape[1])
    np.testing.assert_array_equal(np.concatenate([a['_mask'], b['_mask']]), whole['_mask'])
    real = whole['_mask'] > 0
    for k in ('input_ids', 'label'):
      np.testing.assert_array_equal(np.concatenate([a[k], b[k]])[real], whole[k][real])


def test_collect_restores_the_split_order_and_zero_pads_per_token_outputs(text_input):
  assert tokenizers.special_ids(data.tokenizers.tokenizer(text_input))['[PAD]'] == 0
  sharding = parallel.batch_sharding(parallel.make_mesh((1,), ('data',), jax.devices()[:1]))
  fn = lambda state, b: {'ids': b['input_ids'], 'label': b['label']}
  plain = evals.collect(fn, None, _batches(text_input, 0), sharding)
  cut = evals.collect(fn, None, _batches(text_input, BUCKET), sharding)
  assert min(b['input_ids'].shape[1] for b in _batches(text_input, BUCKET)) < MAX_LEN    # narrower batches were widened
  np.testing.assert_array_equal(cut['_mask'], plain['_mask'])
  np.testing.assert_array_equal(cut['label'][:N], plain['label'][:N])
  np.testing.assert_array_equal(cut['ids'][:N], plain['ids'][:N])      # zeros where cut: [PAD] is 0


@pytest.mark.parametrize('family', ['bert', 'gpt2'])
def test_a_classifier_scores_the_same_with_padding_cut(text_input, family):
  vocab = data.tokenizers.tokenizer(text_input).get_vocab_size()
  if family == 'bert':
    model = bert.BertForSequenceClassification(bert.BertConfig.from_dict(dict(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=MAX_LEN)), num_labels=3, pooling='mean', rngs=nnx.Rngs(0))
    call = lambda m, b: m(b['input_ids'], b['attention_mask'], b['token_type_ids']).logits
  else:
    model = gpt2.GPT2ForSequenceClassification(gpt2.GPT2Config.from_dict(dict(
        vocab_size=vocab, n_positions=MAX_LEN, n_embd=32, n_layer=2, n_head=4)), num_labels=3, rngs=nnx.Rngs(0))
    call = lambda m, b: m(b['input_ids'], b['attention_mask']).logits
  model.eval()
  forward = nnx.jit(call)
  sharding = parallel.batch_sharding(parallel.make_mesh((1,), ('data',), jax.devices()[:1]))
  fn = lambda state, b: {'logits': forward(model, b)}
  plain = evals.collect(fn, None, _batches(text_input, 0), sharding)['logits'][:N]
  cut = evals.collect(fn, None, _batches(text_input, BUCKET), sharding)['logits'][:N]
  assert np.abs(plain).max() > 0.1
  np.testing.assert_allclose(cut, plain, rtol=1e-5, atol=1e-5)
