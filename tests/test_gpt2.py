"""GPT-2 against transformers' PyTorch implementation: random non-default models (no pretrained GPT-2 is
available offline), every head, both directions, LoRA export, the KV cache and packed documents."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from ftjax import hf, models, parallel, trees
from ftjax.errors import UserError
from ftjax.models import gpt2, lora

# Deliberately non-default: odd sizes, n_inner not 4 * n_embd, per-layer attention scaling, another eps.
SMALL = dict(vocab_size=301, n_positions=77, n_embd=96, n_layer=3, n_head=4, n_inner=200, layer_norm_epsilon=1e-6,
             scale_attn_by_inverse_layer_idx=True, initializer_range=0.1, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)
PAD = SMALL['pad_token_id']


def _perturbed(model):
  """Non-trivial biases and LayerNorm parameters everywhere (a fresh model has zeros and ones)."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope='module')
def refs(tmp_path_factory):
  """transformers models (LM with gelu_new, classifier with relu) and their saved directories."""
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp('gpt2')
  lm = _perturbed(transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, activation_function='gelu_new')))
  cls = _perturbed(transformers.GPT2ForSequenceClassification(
      transformers.GPT2Config(**SMALL, activation_function='relu', num_labels=3)))
  lm.save_pretrained(str(root / 'lm'))
  cls.save_pretrained(str(root / 'cls'))
  return dict(lm=lm, cls=cls, lm_dir=str(root / 'lm'), cls_dir=str(root / 'cls'), root=root)


@pytest.fixture(scope='module')
def loaded(refs):
  out = {}
  for head, d, kw in (('lm', refs['lm_dir'], {}), ('classification', refs['cls_dir'], dict(num_labels=3))):
    model, report = hf.from_pretrained(d, head=head, verbose=False, **kw)
    assert not report['initialised'] and not report['ignored'], report
    out[head] = model
  return out


@jax.jit
def forward(model, ids, mask=None, segment_ids=None, positions=None, cache=None):
  return model(ids, mask, segment_ids, positions=positions, cache=cache)


def right_padded(seed=0, b=3, t=13):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, SMALL['vocab_size'], (b, t))
  mask = np.ones((b, t), np.int64)
  mask[1, 9:] = 0
  mask[2, 4:] = 0
  return np.where(mask == 1, ids, PAD), mask


def torch_run(model, ids, mask=None, positions=None):
  kw = {} if positions is None else dict(position_ids=torch.tensor(positions))
  with torch.no_grad():
    return model(torch.tensor(ids), attention_mask=None if mask is None else torch.tensor(mask), **kw)


def test_lm_classification_and_features_match_transformers_on_a_padded_batch(refs, loaded):
  ids, mask = right_padded()
  valid = mask.astype(bool)
  out = forward(loaded['lm'], ids, mask)
  ref = torch_run(refs['lm'], ids, mask).logits.numpy()
  np.testing.assert_allclose(np.asarray(out.logits)[valid], ref[valid], atol=1e-4, rtol=0)
  assert out.cache is None and 'lm_head' not in nnx.to_pure_dict(nnx.state(loaded['lm'], nnx.Param))
  cls = forward(loaded['classification'], ids, mask).logits
  np.testing.assert_allclose(cls, torch_run(refs['cls'], ids, mask).logits.numpy(), atol=1e-4, rtol=0)
  # Without attention_mask the last token that is not pad_token_id, as transformers does.
  np.testing.assert_allclose(forward(loaded['classification'], ids).logits, cls, atol=1e-5, rtol=0)
  # Probe features: the mean of the last hidden states over real tokens.
  h = torch_run(refs['lm'].transformer, ids, mask).last_hidden_state.numpy()
  want = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  feats = jax.jit(lambda m, i, k: m.embed(i, k))(loaded['lm'], ids, mask)
  assert feats.shape == (3, SMALL['n_embd']) and feats.dtype == jnp.float32
  np.testing.assert_allclose(feats, want, atol=1e-4, rtol=0)


def test_old_checkpoint_buffers_and_the_tied_head_are_ignored_quietly(refs, loaded):
  sd = {k: v.numpy() for k, v in refs['lm'].state_dict().items()}
  sd.update({'transformer.h.0.attn.bias': np.tril(np.ones((1, 1, 77, 77), np.float32)),
             'transformer.h.0.attn.masked_bias': np.float32(-1e4), 'lm_head.weight': sd['transformer.wte.weight']})
  params = nnx.to_pure_dict(nnx.state(loaded['lm'], nnx.Param))
  _, _, report = hf.convert_from_hf(sd, params, model_type='gpt2')
  assert not report['ignored'] and not report['initialised'] and len(report['loaded']) == 2 + 12 * 3 + 2


@pytest.mark.parametrize('head', ['lm', 'classification'])
def test_save_pretrained_loads_in_transformers_with_the_same_outputs(refs, loaded, head, tmp_path):
  hf_cls = transformers.GPT2LMHeadModel if head == 'lm' else transformers.GPT2ForSequenceClassification
  ids, mask = right_padded(1)
  valid = mask.astype(bool)
  want = torch_run(refs['lm' if head == 'lm' else 'cls'], ids, mask).logits.numpy()
  hf.save_pretrained(loaded[head], str(tmp_path / 'plain'))
  config = json.load(open(tmp_path / 'plain' / 'config.json'))
  assert config['model_type'] == 'gpt2' and config['architectures'] == [hf_cls.__name__]
  again, info = hf_cls.from_pretrained(str(tmp_path / 'plain'), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  got = torch_run(again.eval(), ids, mask).logits.numpy()
  np.testing.assert_allclose(got[valid] if head == 'lm' else got, want[valid] if head == 'lm' else want, atol=1e-5)
  # LoRA on the fused QKV and both projections, adapters set by hand: the merged export is the LoRA model.
  adapted = lora.apply(nnx.clone(loaded[head]), rank=2, alpha=4.0, targets=r'c_attn|c_proj', rngs=nnx.Rngs(1))
  adapters = [m for _, m in nnx.iter_modules(adapted) if isinstance(m, lora.LoRALinear)]
  assert len(adapters) == 3 * SMALL['n_layer']
  for i, m in enumerate(adapters):
    m.lora_b[...] = 0.05 * jax.random.normal(jax.random.key(i), m.lora_b.shape)
  ours = np.asarray(forward(adapted, ids, mask).logits)
  assert np.abs(ours - want).max() > 1e-2             # the adapters change the outputs
  hf.save_pretrained(adapted, str(tmp_path / 'lora'))
  merged, info = hf_cls.from_pretrained(str(tmp_path / 'lora'), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  got = torch_run(merged.eval(), ids, mask).logits.numpy()
  np.testing.assert_allclose(got[valid] if head == 'lm' else got, ours[valid] if head == 'lm' else ours, atol=1e-4)


def _left_padded(seed=2, b=3, t=12):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, SMALL['vocab_size'], (b, t))
  mask = np.ones((b, t), np.int64)
  mask[1, :2] = 0
  mask[2, :4] = 0
  return np.where(mask == 1, ids, PAD), mask, np.maximum(np.cumsum(mask, 1) - 1, 0)


def test_kv_cache_prefill_then_decode_equals_the_full_forward(refs, loaded):
  model = loaded['lm']
  ids, mask, pos = _left_padded()
  valid, t = mask.astype(bool), ids.shape[1]
  full = np.asarray(forward(model, ids, mask, positions=pos).logits)
  ref = torch_run(refs['lm'], ids, mask, pos).logits.numpy()       # left padding, explicit positions
  np.testing.assert_allclose(full[valid], ref[valid], atol=1e-4, rtol=0)
  ones = np.ones_like(mask)
  unpadded = np.asarray(forward(model, ids, ones, positions=np.broadcast_to(np.arange(t), ids.shape)).logits)
  # Left-padded: a 6-token prefill with explicit positions, then one token at a time. Unpadded: token by
  # token from an empty cache with the default positions (cache.index + arange).
  for m, want, p, explicit in ((mask, full, 6, True), (ones, unpadded, 0, False)):
    cache = model.init_cache(3, t)
    assert cache.k[0].shape == (3, t, SMALL['n_head'], SMALL['n_embd'] // SMALL['n_head'])
    assert len(cache.k) == len(cache.v) == SMALL['n_layer'] and cache.mask.dtype == jnp.bool_
    if p:
      out = forward(model, ids[:, :p], m[:, :p], positions=pos[:, :p], cache=cache)
      real = m[:, :p] == 1
      np.testing.assert_allclose(np.asarray(out.logits)[real], want[:, :p][real], atol=1e-5, rtol=0)
      cache = out.cache
    for i in range(p, t):
      out = forward(model, ids[:, i:i + 1], m[:, i:i + 1], positions=pos[:, i:i + 1] if explicit else None,
                    cache=cache)
      np.testing.assert_allclose(out.logits[:, 0], want[:, i], atol=1e-5, rtol=0)
      cache = out.cache
    assert int(cache.index) == t and (np.asarray(cache.mask) == m.astype(bool)).all()
  with pytest.raises(UserError, match='exceeds n_positions=77'):
    model.init_cache(1, 78)


def test_packed_documents_equal_each_document_alone(refs, loaded):
  rng = np.random.default_rng(3)
  docs = [rng.integers(3, SMALL['vocab_size'], n) for n in (5, 4)]
  ids = np.concatenate([*docs, [PAD] * 3])[None]
  segments = np.array([[1] * 5 + [2] * 4 + [0] * 3])
  mask = (segments > 0).astype(np.int64)
  np.testing.assert_array_equal(gpt2.segment_positions(jnp.asarray(segments)), [[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]])
  out = np.asarray(forward(loaded['lm'], ids, mask, segments).logits)[0]
  for doc, start in zip(docs, (0, 5)):
    alone = torch_run(refs['lm'], doc[None]).logits.numpy()[0]
    np.testing.assert_allclose(out[start:start + len(doc)], alone, atol=1e-4, rtol=0)


TINY = dict(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)


@pytest.mark.parametrize('head', ['none', 'lm', 'classification'])
def test_every_parameter_has_logical_axes_and_a_layer(head):
  for targets in ('', r'c_attn|c_proj|c_fc|score'):
    cfg = dict(name='gpt2', head=head, **TINY, lora=dict(rank=2 if targets else 0, targets=targets))
    model = nnx.eval_shape(lambda c=cfg: models.build(c, nnx.Rngs(0)))
    flat = trees.flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert len(flat) == 2 + 12 * TINY['n_layer'] + 2 + (head == 'classification') + (
        2 * (4 * TINY['n_layer'] + (head == 'classification')) if targets else 0)
    for name, x in flat.items():
      axes = gpt2.logical_axes(name, x.ndim)
      assert len(axes) == x.ndim and set(axes) - {None} <= {n for n, _ in parallel.DEFAULT_RULES}, (name, axes)
  assert gpt2.logical_axes('transformer.h.1.attn.c_attn.kernel', 2) == ('embed', 'heads')
  assert gpt2.logical_axes('h.0.mlp.c_proj.lora_b', 2) == (None, 'embed')
  assert gpt2.logical_axes('transformer.wte.embedding', 2) == ('vocab', 'embed')
  for bad in ('made_up.module.kernel', 'transformer.h.0.attn.c_attn.scale', 'wte.kernel'):
    with pytest.raises(ValueError, match='no logical axes'):
      gpt2.logical_axes(bad, 2)
  assert [gpt2.lr_layer(n) for n in ('transformer.wte.embedding', 'wpe.embedding', 'transformer.h.0.ln_1.scale',
                                     'h.2.mlp.c_fc.kernel', 'transformer.ln_f.bias', 'score.kernel')] == [0, 0, 1, 3, None, None]


def test_training_mode_needs_rngs_and_its_explicit_attention_agrees(loaded):
  model = nnx.clone(loaded['lm'])
  ids, mask = right_padded(4)
  valid = mask.astype(bool)
  want = np.asarray(forward(model, ids, mask).logits)
  model.train()
  with pytest.raises(UserError, match='called without rngs'):
    model(ids, mask)
  # Attention dropout "active" at a rate that keeps everything: the explicit-softmax path, same numbers.
  for b in model.transformer.h:
    b.attn.attn_dropout.rate, b.attn.resid_dropout.rate, b.mlp.dropout.rate = 1e-9, 0.0, 0.0
  model.transformer.drop.rate = 0.0
  got = jax.jit(lambda m, i, k: m(i, k, rngs=nnx.Rngs(dropout=0)).logits)(model, ids, mask)
  np.testing.assert_allclose(np.asarray(got)[valid], want[valid], atol=1e-5, rtol=0)


def _config_dir(path, cfg):
  path.mkdir()
  json.dump(cfg, open(path / 'config.json', 'w'))
  return str(path)


def test_wrong_architectures_and_fields_are_one_clear_error(refs, tmp_path):
  gpt2_dir = refs['lm_dir']
  bert_dir = _config_dir(tmp_path / 'bert', transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
                                                                    num_attention_heads=2, intermediate_size=64).to_dict())
  with pytest.raises(UserError, match=r"model_type='gpt2', expected a bert checkpoint.*set model.name=gpt2"):
    models.create(dict(name='bert', config=gpt2_dir), 0)
  with pytest.raises(UserError, match=r"model_type='bert', expected a gpt2 checkpoint.*set model.name=bert"):
    models.create(dict(name='gpt2', config=bert_dir), 0)
  cfg = json.load(open(f'{gpt2_dir}/config.json'))
  cases = [({'n_head': '4'}, r"n_head='4' \(str\); expected an integer >= 1"),
           ({'scale_attn_weights': 1}, r'scale_attn_weights=1 \(int\); expected true or false'),
           ({'layer_norm_epsilon': True}, r'layer_norm_epsilon=True \(bool\); expected a number > 0'),
           ({'n_head': 5}, 'n_embd=96 is not divisible by n_head=5'),
           ({'activation_function': 'swiglu'}, "activation_function='swiglu' is not supported"),
           ({'n_embd': None}, r'n_embd=None \(NoneType\)')]
  for i, (change, message) in enumerate(cases):
    d = _config_dir(tmp_path / f'bad{i}', {**cfg, **change})
    with pytest.raises(UserError, match=rf'{d}/config.json: {message}'):
      models.create(dict(name='gpt2', config=d), 0)
  d = _config_dir(tmp_path / 'missing', {k: v for k, v in cfg.items() if k != 'n_layer'})
  with pytest.raises(UserError, match='n_layer is missing'):
    models.create(dict(name='gpt2', config=d), 0)
  d = _config_dir(tmp_path / 'untied', {**cfg, 'tie_word_embeddings': False})
  with pytest.raises(UserError, match='tie_word_embeddings=False'):
    models.create(dict(name='gpt2', head='lm', config=d), 0)
  with pytest.raises(UserError, match="model.head='mlm'; choose one of none, lm, classification"):
    models.create(dict(name='gpt2', head='mlm', **TINY), 0)
  # transformers' attribute names (hidden_size for n_embd, ...) are read too.
  aliased = {k: v for k, v in cfg.items() if k not in ('n_embd', 'n_layer')}
  d = _config_dir(tmp_path / 'aliases', {**aliased, 'hidden_size': 96, 'num_hidden_layers': 3})
  assert gpt2.vocab_size(dict(config=d)) == 301 and models.vocab_size(dict(name='gpt2', config=d)) == 301
