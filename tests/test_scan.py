"""model.scan_layers (BERT, GPT-2): stacked layer parameters run by nnx.scan equal the unrolled model
(outputs, loss, gradients, remat, the KV cache and generation), convert to and from transformers' per-layer
tensors, shard by the layer's own axes, and refuse what they cannot do with one line."""
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from ml_collections import ConfigDict

from ftjax import checkpoint, defaults, generate, hf, models, optim, parallel, trees
from ftjax import state as states
from ftjax.errors import UserError
from ftjax.models import bert, gpt2

L = 3
BERT = dict(name='bert', head='classification', num_labels=3, vocab_size=61, hidden_size=32, num_hidden_layers=L,
            num_attention_heads=2, intermediate_size=40, max_position_embeddings=16, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, initializer_range=0.2)
GPT2 = dict(name='gpt2', head='lm', vocab_size=61, n_embd=32, n_layer=L, n_head=2, n_inner=40, n_positions=16,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2, pad_token_id=0, eos_token_id=1)
CONTAINER = {'bert': ('bert', 'encoder', 'layer'), 'gpt2': ('transformer', 'h')}


def _batch(seed=0, b=2, t=8):
  rng = np.random.default_rng(seed)
  mask = np.ones((b, t), np.int32)
  mask[1, 5:] = 0
  return rng.integers(2, 61, (b, t)).astype(np.int32), mask, rng.integers(0, 3, (b,))


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _stacked_twin(model, cfg):
  """The scan_layers model of `cfg` holding `model`'s weights, layer i's at index i of each stacked
  parameter: a direct np.stack, independent of ftjax/hf.py."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  *outer, last = CONTAINER[cfg['name']]
  layers = _get(params, outer)[last]
  _get(params, outer)[last] = jax.tree.map(lambda *xs: np.stack(xs), *[layers[i] for i in range(L)])
  gd, state, rest = nnx.split(nnx.eval_shape(lambda: models.build({**cfg, 'scan_layers': True}, nnx.Rngs(1))),
                              nnx.Param, ...)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(gd, state, rest)


def _unstacked(grads, name):
  *outer, last = CONTAINER[name]
  stacked = _get(grads, outer)[last]
  _get(grads, outer)[last] = {i: jax.tree.map(lambda g, i=i: g[i], stacked) for i in range(L)}
  return grads


def _loss(model, ids, mask, labels):
  """Training mode (dropout rates 0, so the dropout keys still flow through the scan)."""
  out = model(ids, mask, rngs=nnx.Rngs(dropout=0))
  if out.logits.ndim == 2:        # classification
    return optax.softmax_cross_entropy_with_integer_labels(out.logits, labels).mean()
  ce = optax.softmax_cross_entropy_with_integer_labels(out.logits[:, :-1], ids[:, 1:])
  return (ce * mask[:, 1:]).sum() / mask[:, 1:].sum()


def _loss_and_grads(model, batch):
  gd, params, rest = nnx.split(model, nnx.Param, ...)
  f = jax.jit(jax.value_and_grad(lambda p: _loss(nnx.merge(gd, p, rest), *batch)))
  loss, grads = f(params)
  return float(loss), nnx.to_pure_dict(grads)


@functools.cache
def _reference(name):
  """The unrolled model (no remat) and its eval logits, training loss and gradients on _batch()."""
  ref = models.create(BERT if name == 'bert' else GPT2, seed=0)
  ids, mask, labels = _batch()
  ref.eval()
  logits = np.asarray(jax.jit(lambda m: m(ids, mask).logits)(ref))
  ref.train()
  return ref, logits, *_loss_and_grads(ref, (ids, mask, labels))


@pytest.mark.parametrize('cfg,remat', [(BERT, ''), (BERT, 'full'), (GPT2, '')], ids=['bert', 'bert-remat', 'gpt2'])
def test_scanned_layers_equal_the_unrolled_model(cfg, remat):
  ref, want, l0, g0 = _reference(cfg['name'])
  cfg = {**cfg, 'remat': remat}
  model = _stacked_twin(ref, cfg)
  assert model.bert.encoder.scan_layers if cfg['name'] == 'bert' else model.transformer.scan_layers
  ids, mask, labels = _batch()
  valid = mask.astype(bool) if cfg['name'] == 'gpt2' else slice(None)
  model.eval()
  got = np.asarray(jax.jit(lambda m: m(ids, mask).logits)(model))
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-5, rtol=0)
  model.train()
  gd, params, rest = nnx.split(model, nnx.Param, ...)
  jaxpr = str(jax.make_jaxpr(lambda p: _loss(nnx.merge(gd, p, rest), ids, mask, labels))(params))
  assert 'scan[' in jaxpr and bool(re.search(r'\b(remat2|checkpoint)\[', jaxpr)) == bool(remat)   # remat in the body
  l1, g1 = _loss_and_grads(model, (ids, mask, labels))
  assert abs(l0 - l1) < 1e-5
  g1 = trees.flat(_unstacked(g1, cfg['name']))
  g0 = trees.flat(g0)
  assert set(g0) == set(g1) and len(g0) > 20
  for k in g0:
    np.testing.assert_allclose(g1[k], g0[k], atol=1e-5, rtol=0, err_msg=k)


def test_gpt2_kv_cache_and_generation_equal_the_unrolled_model():
  ref = nnx.clone(_reference('gpt2')[0])
  model = _stacked_twin(ref, GPT2)
  ref.eval(), model.eval()
  ids, mask, _ = _batch(1)
  ones = np.ones_like(mask)
  want = np.asarray(ref(ids, ones).logits)
  cache = model.init_cache(2, 12)
  assert cache.k.shape == (L, 2, 12, 2, 16)       # one stacked array, not one per layer
  step = jax.jit(lambda m, i, c: m(i, jnp.ones_like(i), cache=c))
  out = step(model, ids[:, :5], cache)             # prefill, then one token at a time
  np.testing.assert_allclose(out.logits, want[:, :5], atol=1e-5, rtol=0)
  for i in range(5, 8):
    out = step(model, ids[:, i:i + 1], out.cache)
    np.testing.assert_allclose(out.logits[:, 0], want[:, i], atol=1e-5, rtol=0)
  prompts = [list(ids[0, :4]), list(ids[1, :6])]
  assert generate.generate(model, prompts, max_new_tokens=5) == generate.generate(ref, prompts, max_new_tokens=5)


def test_dropout_draws_a_key_per_layer_and_per_call():
  layers = models.stack(lambda r: nnx.Linear(2, 2, rngs=r), L, nnx.Rngs(0))
  assert not np.allclose(layers.kernel[0], layers.kernel[1])          # each slice its own init
  rngs = nnx.Rngs(dropout=0)
  bits = lambda: models.scan(lambda m, c, x, r: (c, jax.random.bits(r.dropout(), (4,))), layers, 0, rngs=rngs)[1]
  first, second = np.asarray(bits()), np.asarray(bits())
  rows = [tuple(r) for r in np.concatenate([first, second])]
  assert first.shape == (L, 4) and len(set(rows)) == 2 * L
  # In a model: training-mode dropout differs by key and repeats with the same one.
  model = models.create({**BERT, 'scan_layers': True, 'hidden_dropout_prob': 0.3}, seed=0)
  ids, mask, _ = _batch()
  f = jax.jit(lambda m, k: m(ids, mask, rngs=nnx.Rngs(dropout=k)).logits)
  a, b, c = (f(model, jax.random.key(k)) for k in (0, 0, 1))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def _perturbed(m):
  with torch.no_grad():
    for p in m.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return m.eval()


def test_transformers_round_trip_stacks_and_unstacks(tmp_path):
  torch.manual_seed(0)
  ids, mask, _ = _batch(2)
  arch = {k: v for k, v in BERT.items() if k not in ('name', 'head', 'num_labels')}
  cases = (('bert', transformers.BertForSequenceClassification(transformers.BertConfig(**arch, num_labels=3)),
            dict(head='classification', num_labels=3)),
           ('gpt2', transformers.GPT2LMHeadModel(transformers.GPT2Config(
               **{k: v for k, v in GPT2.items() if k not in ('name', 'head')})), dict(head='lm')))
  for name, ref, kw in cases:
    ref = _perturbed(ref)
    ref.save_pretrained(str(tmp_path / name))
    model, report = hf.from_pretrained(str(tmp_path / name), scan_layers=True, verbose=False, **kw)
    assert not report['initialised'] and not report['ignored']
    fam = models.get_module(name)
    stacked = [x for n, x in trees.flat(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()
               if fam.layer_index_at(tuple(n.split('.'))) is not None]
    assert stacked and all(x.shape[0] == L for x in stacked)
    with torch.no_grad():
      want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    valid = mask.astype(bool) if name == 'gpt2' else slice(None)
    np.testing.assert_allclose(np.asarray(model(ids, mask).logits)[valid], want[valid], atol=1e-4, rtol=0)
    hf.save_pretrained(model, str(tmp_path / f'{name}-back'))        # unstacked for transformers
    again, info = type(ref).from_pretrained(str(tmp_path / f'{name}-back'), output_loading_info=True)
    assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
    with torch.no_grad():
      back = again.eval()(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(back[valid], want[valid], atol=1e-4, rtol=0)
    if name == 'bert':        # the trainer's init.source=<transformers dir> stacks the same way
      cfg = defaults.base_config()
      tx, _ = optim.build(cfg.optim, cfg.schedule, 10)
      mcfg = ConfigDict(dict(name='bert', scan_layers=True, **kw, **arch))
      make = states.make_init(mcfg, tx, seed=2)
      lay = states.Layout(make, jax.eval_shape(make), jax.tree.map(lambda _: None, jax.eval_shape(make)), None, None)
      loaded = states.load_pretrained(lay, ConfigDict(dict(source=str(tmp_path / name), reinit='')), mcfg)
      kernel = loaded.params['bert']['encoder']['layer']['intermediate']['dense']['kernel']
      for i in range(L):
        np.testing.assert_array_equal(kernel[i], ref.bert.encoder.layer[i].intermediate.dense.weight.detach().numpy().T)


def test_stacked_parameters_shard_by_their_layers_axes():
  mesh = parallel.make_mesh((2, 2), ('fsdp', 'model'))
  heads = {'bert': ('none', 'mlm', 'pretraining', 'classification', 'token_classification', 'qa'),
           'gpt2': ('none', 'lm', 'classification')}
  for cfg in (BERT, GPT2):
    fam = models.get_module(cfg['name'])
    for head in heads[cfg['name']]:
      model = nnx.eval_shape(lambda c=cfg, h=head: models.build({**c, 'head': h, 'scan_layers': True}, nnx.Rngs(0)))
      flat = trees.flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
      stacked = [n for n in flat if fam.layer_index_at(tuple(n.split('.'))) is not None]
      assert len(stacked) == (16 if cfg['name'] == 'bert' else 12)
      for n, x in flat.items():
        axes = fam.logical_axes(n, x.ndim)
        assert len(axes) == x.ndim and (axes[0] is None) >= (n in stacked), (n, axes)
        assert set(axes) - {None} <= {r for r, _ in parallel.DEFAULT_RULES}
    specs = trees.flat(parallel.param_shardings(nnx.to_pure_dict(nnx.state(model, nnx.Param)), mesh,
                                                parallel.DEFAULT_RULES, fam.logical_axes))
    qkv = 'bert.encoder.layer.attention.self.query.kernel' if cfg['name'] == 'bert' else 'transformer.h.attn.c_attn.kernel'
    assert specs[qkv].spec == jax.sharding.PartitionSpec(None, 'fsdp', 'model')


def test_what_stacked_layers_cannot_do_is_one_clear_error(tmp_path):
  lora = dict(rank=2, targets='query')
  with pytest.raises(UserError, match=r'model\.lora\.rank > 0 needs model\.scan_layers=False'):
    models.build({**BERT, 'scan_layers': True, 'lora': lora}, nnx.Rngs(0))
  with pytest.raises(UserError, match='scan_layers=True.*scale_attn_by_inverse_layer_idx=False'):
    models.build({**GPT2, 'scan_layers': True, 'scale_attn_by_inverse_layer_idx': True}, nnx.Rngs(0))
  scan_params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: models.build({**BERT, 'scan_layers': True}, nnx.Rngs(0))), nnx.Param))
  for fam, name in ((bert, 'bert.encoder.layer.attention.self.query.kernel'), (gpt2, 'transformer.h.mlp.c_fc.bias')):
    with pytest.raises(UserError, match='optim.layer_decay.*model.scan_layers=False'):
      fam.lr_layer(name)
  with pytest.raises(UserError, match='optim.layer_decay'):
    optim.layer_scale(0.9, bert.lr_layer)[1](scan_params)
  # An ftjax checkpoint of the other layout (init.source: state.load_pretrained merges by name, then checks).
  plain = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: models.build(BERT, nnx.Rngs(0))), nnx.Param))
  for target, source in ((scan_params, plain), (plain, scan_params)):
    _, report = checkpoint.merge_by_name(target, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), source))
    with pytest.raises(UserError, match=r'model.scan_layers only.*hf.save_pretrained.*init.source'):
      hf.check_layer_layout(report, 'ckpt')
  # Some layers from a transformers checkpoint, the others fresh: not a stack.
  torch.manual_seed(0)
  arch = {k: v for k, v in BERT.items() if k not in ('name', 'head', 'num_labels')}
  transformers.BertModel(transformers.BertConfig(**{**arch, 'num_hidden_layers': 2})).save_pretrained(str(tmp_path))
  with pytest.raises(UserError, match='stacks its layers.*gives.* 2 of 3'):
    hf.from_pretrained(str(tmp_path), scan_layers=True, **{k: v for k, v in arch.items() if 'layers' in k})
  model = models.create({**BERT, 'scan_layers': True}, seed=0)
  with pytest.raises(UserError, match='load_adapters: the model stacks its layers'):
    hf.load_adapters(model, str(tmp_path))
