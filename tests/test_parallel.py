"""Data parallelism over 8 simulated devices gives the single-device step, BatchNorm included;
gradient accumulation gives the big-batch update."""
import functools

import jax
import numpy as np
import pytest

from conftest import digits_batch, tiny_setup
from ftjax import parallel, train
from ftjax import state as states
from ftjax.errors import UserError

# Every setup here uses SGD with momentum: one optimizer-state structure, so one initial state serves
# them all (a single-step comparison is unaffected: the first momentum update is the gradient itself).
MOMENTUM = dict(momentum=0.9)


@functools.lru_cache(maxsize=None)
def _initial_state():
  """The fresh state of tiny_setup's model and optimizer, on the host: compiled and run once, then
  copied into each mesh's replicated layout."""
  return jax.device_get(states.initialize(tiny_setup(optim_overrides=MOMENTUM)['init'], None))


def _run(setup, mesh, batch, n_steps=2):
  rep = parallel.replicated(mesh)
  shard = parallel.batch_sharding(mesh)
  state = jax.device_put(_initial_state(), rep)
  gb = parallel.global_batch(batch, shard)
  assert len(gb['image'].sharding.device_set) == mesh.size
  step = jax.jit(setup['step'], in_shardings=(rep, shard), out_shardings=(rep, None))
  history = []
  for _ in range(n_steps):
    state, m = step(state, gb)
    history.append(jax.device_get(m))
  return jax.device_get(state), history


def _one():
  return parallel.make_mesh((1,), ('data',), jax.devices()[:1])


def _eight():
  return parallel.make_mesh((-1,), ('data',))


def test_eight_device_data_parallel_matches_one_device():
  assert jax.device_count() == 8
  setup = tiny_setup(optim_overrides=MOMENTUM)
  batch = digits_batch(32)
  one, h1 = _run(setup, _one(), batch)
  eight, h8 = _run(setup, _eight(), batch)
  for a, b in zip(h1, h8):
    np.testing.assert_allclose(a['train/loss'], b['train/loss'], rtol=1e-5)
    np.testing.assert_allclose(a['train/grad_norm'], b['train/grad_norm'], rtol=1e-4)
  # Parameters after two SGD+momentum steps: the gradients matched.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), one.params, eight.params)
  # BatchNorm running statistics are those of the global batch, not of each device's 4 examples.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
               one.model_state, eight.model_state)
  stats = one.model_state['stem_norm']['mean']
  assert np.abs(stats).max() > 1e-3     # the statistics did move, so the comparison means something


def test_accumulation_equals_big_batch():
  """accum_steps=4 over B/4 micro-batches == one step at B. BatchNorm in training mode legitimately
  differs (its statistics become per micro-batch), so the ResNet runs with frozen BatchNorm here,
  as in fine-tuning with frozen statistics: nothing then couples the examples of a batch."""
  big, acc = tiny_setup(optim_overrides=MOMENTUM), tiny_setup(optim_overrides=MOMENTUM, accum_steps=4)
  g_frozen = states.graphdefs(big['cfg'].model)[1]
  big['step'] = train.make_train_step(g_frozen, big['task'], big['tx'], lambda s: 0.1, 1)
  acc['step'] = train.make_train_step(g_frozen, acc['task'], acc['tx'], lambda s: 0.1, 4)
  batch = digits_batch(32)
  s_big, h_big = _run(big, _one(), batch, n_steps=1)
  s_acc, h_acc = _run(acc, _one(), batch, n_steps=1)
  np.testing.assert_allclose(h_big[0]['train/loss'], h_acc[0]['train/loss'], rtol=1e-5)
  np.testing.assert_allclose(h_big[0]['train/grad_norm'], h_acc[0]['train/grad_norm'], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), s_big.params, s_acc.params)
  init = _initial_state()
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(init.params), jax.tree.leaves(s_big.params)))
  assert moved > 1e-3


def test_accumulation_also_runs_data_parallel():
  setup = tiny_setup(optim_overrides=MOMENTUM, accum_steps=2)
  one, h1 = _run(setup, _one(), digits_batch(32), n_steps=1)
  eight, h8 = _run(setup, _eight(), digits_batch(32), n_steps=1)
  np.testing.assert_allclose(h1[0]['train/loss'], h8[0]['train/loss'], rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), one.params, eight.params)


def test_mesh_errors():
  with pytest.raises(UserError, match='needs 16 devices'):     # (a smaller shape takes the first devices)
    parallel.make_mesh((16,), ('data',))
  with pytest.raises(UserError, match='at most one -1'):
    parallel.make_mesh((-1, -1), ('data', 'model'))
  m = parallel.make_mesh((-1, 2), ('data', 'model'))
  assert dict(m.shape) == {'data': 4, 'model': 2} and parallel.data_parallel_size(m) == 4


def test_a_smaller_mesh_takes_the_first_devices():
  """`--config.mesh_shape=(1,)` on a machine with 8 devices: one device, not an error (the tests' in-process
  runs rely on it); with a -1 the mesh still takes every device."""
  m = parallel.make_mesh((3,), ('data',))
  assert dict(m.shape) == {'data': 3} and list(m.devices.flat) == jax.devices()[:3]
  m = parallel.make_mesh((2, 2), ('fsdp', 'model'))
  assert list(m.devices.flat) == jax.devices()[:4]
  assert parallel.make_mesh((-1,), ('data',)).size == 8
