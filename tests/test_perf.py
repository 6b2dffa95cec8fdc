"""The accelerator recipe, checked on CPU: rematerialisation keeps fewer activations and changes no
result; half-precision compute keeps fp32 master weights; device prefetch keeps the input order and
an exact resume state."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import digits_batch
from ftjax import defaults, models, optim, parallel, tasks, train
from ftjax import state as states
from ftjax.errors import UserError

BERT = dict(name='bert', vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=256, max_position_embeddings=64, head='classification', num_labels=3)
RESNET = dict(name='resnet', depth=18, stages=(1, 1, 1, 1), width=0.125, stem='small', in_channels=1,
              num_classes=10)
DEFAULTS = dict(remat='', dtype='float32')    # models.COMMON's: the baseline both tests compare against


def _batch(family):
  if family == 'resnet':
    return digits_batch(32)
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 128, (16, 64)).astype(np.int32)
  return {'input_ids': ids, 'attention_mask': np.ones_like(ids), 'token_type_ids': np.zeros_like(ids),
          'label': rng.integers(0, 3, 16).astype(np.int32)}


def _config(family, **model):
  cfg = defaults.base_config()
  cfg.model.update({**(BERT if family == 'bert' else RESNET), **model})
  if family == 'bert':
    cfg.task.inputs = ('input_ids', 'attention_mask', 'token_type_ids')
  return cfg


def _step(family, **model):
  cfg = _config(family, **model)
  cfg.optim.update(name='adamw', lr=1e-3)
  cfg.schedule.name = 'constant'
  tx, sched = optim.build(cfg.optim, cfg.schedule, 10)
  g_train, _ = states.graphdefs(cfg.model)
  init = states.make_init(cfg.model, tx, 0)
  return init, train.make_train_step(g_train, tasks.build(cfg.task), tx, sched)


@functools.lru_cache(maxsize=None)
def _fresh(family, dtype):
  """The fresh state of a family at a compute dtype (compiled and run once; remat changes no parameter)."""
  init, _ = _step(family, dtype=dtype)
  return states.initialize(init, None)


def _trained(family, **model):
  """[(metrics, state)] after each of two steps from the fresh state; each configuration is compiled
  and run once per module (the remat and bfloat16 tests share their float32 baseline)."""
  return _trained_cached(family, tuple(sorted((k, v) for k, v in model.items() if DEFAULTS.get(k) != v)))


@functools.lru_cache(maxsize=None)
def _trained_cached(family, overrides):
  model = dict(overrides)
  init, step = _step(family, **model)
  state = _fresh(family, model.get('dtype', DEFAULTS['dtype']))
  # the fresh state stands for this configuration's own: the same tree of the same shapes and dtypes
  assert jax.tree.structure(jax.eval_shape(init)) == jax.tree.structure(state)
  assert [(x.shape, x.dtype) for x in jax.tree.leaves(jax.eval_shape(init))] == [
      (x.shape, x.dtype) for x in jax.tree.leaves(state)]
  batch = _batch(family)
  step = jax.jit(step)
  out = []
  for _ in range(2):
    state, m = step(state, batch)
    out.append((jax.device_get(m), state))
  return out


def _saved_for_backward(family, **model):
  """Bytes the forward pass keeps for the backward pass: the arrays held by jax.vjp's closure (their
  shapes, traced abstractly: no compute)."""
  cfg = _config(family, **model)
  graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: models.build(cfg.model, nnx.Rngs(0))), nnx.Param, ...)
  task, batch = tasks.build(cfg.task), _batch(family)
  residuals = jax.eval_shape(lambda p, r: jax.tree.leaves(jax.vjp(
      lambda p, r: task.loss(nnx.merge(graphdef, p, r), batch, jax.random.key(0))[0], p, r)[1]), params, rest)
  return sum(x.size * x.dtype.itemsize for x in residuals)


@pytest.mark.parametrize('family', ['bert', 'resnet'])
def test_remat_gives_the_same_step_and_keeps_fewer_activations(family):
  # dropout active for BERT: recomputation must replay the same masks
  results = {}
  for policy in ('', 'full', 'dots'):
    m, state = _trained(family, remat=policy)[-1]
    results[policy] = (_saved_for_backward(family, remat=policy), m, jax.device_get(state.params))
  base_saved, base_m, base_p = results['']
  for policy in ('full', 'dots'):
    _, m, p = results[policy]
    np.testing.assert_allclose(m['train/loss'], base_m['train/loss'], rtol=1e-5)
    np.testing.assert_allclose(m['train/grad_norm'], base_m['train/grad_norm'], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(base_p)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # 'full' keeps block inputs only; 'dots' keeps matmul outputs too, so it sits in between
  assert results['full'][0] < results['dots'][0] < 0.75 * base_saved, {k: v[0] for k, v in results.items()}
  assert results['full'][0] < 0.5 * base_saved


@pytest.mark.parametrize('family', ['bert', 'resnet'])
def test_bfloat16_compute_keeps_float32_master_weights(family):
  out = {dtype: _trained(family, dtype=dtype)[0] for dtype in ('float32', 'bfloat16')}   # after one step
  m16, s16 = out['bfloat16']
  assert {x.dtype for x in jax.tree.leaves(s16.params)} == {jnp.dtype('float32')}
  assert {x.dtype for x in jax.tree.leaves(s16.opt_state) if x.ndim} == {jnp.dtype('float32')}
  assert m16['train/loss'].dtype == np.float32
  np.testing.assert_allclose(m16['train/loss'], out['float32'][0]['train/loss'], rtol=3e-2)


def test_unknown_remat_policy_and_attention_are_clear_errors():
  with pytest.raises(UserError, match="model.remat='some'"):
    _step('bert', remat='some')
  with pytest.raises(UserError, match='attention=.flash.; choose auto, xla or cudnn'):
    _step('bert', attention='flash')
  with pytest.raises(UserError, match='cudnn needs a GPU'):        # this machine has none
    _step('bert', attention='cudnn', dtype='bfloat16')


class _Source:
  """An iterator with get_state() like the trainer's input pipeline: state = batches consumed."""

  def __init__(self, n):
    self.i, self.n = 0, n

  def __next__(self):
    if self.i == self.n:
      raise StopIteration
    self.i += 1
    return {'x': np.full((8, 2), self.i, np.float32)}

  def get_state(self):
    return {'i': self.i}


@pytest.mark.parametrize('size', [0, 2])
def test_device_prefetch_keeps_order_and_the_consumed_state(size):
  sharding = parallel.batch_sharding(parallel.make_mesh((8,), ('data',)))
  src = _Source(6)
  feed = parallel.DevicePrefetch(src, sharding, size)
  assert feed.get_state() == {'i': 0}
  for k in range(1, 7):
    b = next(feed)
    assert b['x'].sharding == sharding and float(b['x'][0, 0]) == k
    assert feed.get_state() == {'i': k}                  # not the read-ahead position
    assert src.i == min(6, k + size)
  with pytest.raises(StopIteration):
    next(feed)


def test_bert_dropout_from_16_bit_draws_is_an_unbiased_independent_mask():
  from ftjax.models.bert import Dropout
  drop = Dropout(0.1)
  x = jnp.ones((64, 96, 128))
  masked = jax.jit(lambda x, key: drop(x, rngs=nnx.Rngs(dropout=key)))    # one program, not one per operation
  y1, y2 = (np.asarray(masked(x, jax.random.key(k))) for k in (0, 1))
  kept = y1 > 0
  assert abs(kept.mean() - 0.9) < 0.003                       # 786k draws: sd 3.4e-4
  assert abs(y1.mean() - 1.0) < 0.004                          # scale makes the expectation exact
  # the two 16-bit halves of one 32-bit draw land side by side: they must not be correlated
  both = (kept[..., 0::2] & kept[..., 1::2]).mean()
  assert abs(both - 0.81) < 0.004
  assert 0.15 < (kept != (y2 > 0)).mean() < 0.21              # other key, other mask (2 * 0.9 * 0.1)
  np.testing.assert_array_equal(masked(x, jax.random.key(0)), y1)   # reproducible
  assert np.array_equal(drop(x, deterministic=True), x)
