"""SimCLR: NT-Xent against a plain numpy reference; global negatives across 8 devices; augmentations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import digits_batch
from ftjax import defaults, optim, parallel, tasks, train
from ftjax import state as states
from ftjax.tasks import contrastive



def _nt_xent_numpy(z1, z2, t):
  """Written from the paper's definition, one anchor at a time."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  losses, hits = [], []
  for i in range(2 * n):
    j = i + n if i < n else i - n
    sims = np.array([z[i] @ z[k] / t for k in range(2 * n)])
    others = [k for k in range(2 * n) if k != i]
    losses.append(-sims[j] + np.log(np.sum(np.exp(sims[others]))))
    hits.append(max(others, key=lambda k: sims[k]) == j)
  return np.mean(losses), np.mean(hits)


@pytest.mark.parametrize('n,d,t', [(1, 3, 0.5), (4, 8, 0.1), (7, 5, 1.0)])
def test_nt_xent_matches_numpy_reference(n, d, t):
  rng = np.random.default_rng(n)
  z1 = rng.normal(size=(n, d)).astype(np.float32)
  z2 = (z1 + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
  loss, acc = jax.jit(contrastive.nt_xent, static_argnums=2)(z1, z2, t)   # as in the step: one program
  want_loss, want_acc = _nt_xent_numpy(z1, z2, t)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(acc, want_acc)


def _setup():
  cfg = defaults.base_config()
  cfg.model.update(dict(name='resnet', depth=18, stages=(1, 1, 1, 1), width=0.125, stem='small', in_channels=1,
                        num_classes=0, projection=(32, 16)))
  cfg.task.name = 'contrastive'
  cfg.task.augment.update(crop_min=0.5, flip=0.5, jitter=0.5, normalize=(0.5, 0.5))
  cfg.optim.update(name='lars', lr=0.5, weight_decay=1e-6)
  cfg.schedule.update(name='cosine', warmup_steps=1)
  tx, sched = optim.build(cfg.optim, cfg.schedule, 10)
  g_train, _ = states.graphdefs(cfg.model)
  return states.make_init(cfg.model, tx, 0), train.make_train_step(g_train, tasks.build(cfg.task), tx, sched)


def test_loss_on_eight_devices_equals_one_device_on_the_same_global_batch():
  """Each device holds 4 of 32 images; the loss still sees all 62 negatives per view (and global
  BatchNorm statistics), so the sharded steps equal the single-device ones."""
  init, step = _setup()
  batch = digits_batch(32)
  batch['image'] = (batch['image'] + 1) / 2                   # the contrastive task takes [0, 1]
  fresh = jax.device_get(states.initialize(init, None))      # one init, copied to both meshes
  out = {}
  for name, mesh in [('one', parallel.make_mesh((1,), ('data',), jax.devices()[:1])),
                     ('eight', parallel.make_mesh((-1,), ('data',)))]:
    rep, shard = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    state = jax.device_put(fresh, rep)
    gb = parallel.global_batch(batch, shard)
    f = jax.jit(step, in_shardings=(rep, shard), out_shardings=(rep, None))
    hist = []
    for _ in range(2):
      state, m = f(state, gb)
      hist.append(jax.device_get(m))
    out[name] = (hist, jax.device_get(state.params))
  for a, b in zip(out['one'][0], out['eight'][0]):
    np.testing.assert_allclose(a['train/loss'], b['train/loss'], rtol=1e-5)
    np.testing.assert_allclose(a['train/grad_norm'], b['train/grad_norm'], rtol=1e-4)
  # A per-device loss (negatives only among the local 4 images) is a different, much smaller number.
  assert out['one'][0][0]['train/loss'] > np.log(2 * 4 - 1) + 0.5
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), out['one'][1], out['eight'][1])


def test_augmentations_are_random_in_range_and_reproducible():
  cfg = defaults.base_config().task.augment
  cfg.update(normalize=(0.0, 1.0))
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (6, 40, 40, 3)).astype(np.float32)
  task = contrastive.Task(defaults.base_config().task.copy_and_resolve_references())
  task.augment = cfg
  # as in the step, under jit: one program, not one per operation
  views = jax.jit(task.views)
  v1, v2 = views(images, jax.random.PRNGKey(0))
  assert v1.shape == images.shape and v2.shape == images.shape
  assert float(v1.min()) >= -1e-5 and float(v1.max()) <= 1 + 1e-5
  assert not np.allclose(v1, v2) and not np.allclose(v1, images)
  again, _ = views(images, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(v1, again)
  # A full-area, square crop is the identity; blur keeps a constant image constant.
  square = jnp.asarray(images[:, :32, :32])
  ident = jax.jit(jax.vmap(lambda k, x: contrastive.random_resized_crop(k, x, 1.0, ratio=(1.0, 1.0))))(
      jax.random.split(jax.random.PRNGKey(1), 6), square)
  np.testing.assert_allclose(ident, square, atol=1e-5)
  const = jnp.full((32, 32, 3), 0.3)
  np.testing.assert_allclose(jax.jit(contrastive.gaussian_blur)(jax.random.PRNGKey(2), const), const, atol=1e-6)
  # Hue rotation keeps grey pixels grey (the chroma of a grey is zero).
  grey = jnp.full((4, 4, 3), 0.6)
  np.testing.assert_allclose(jax.jit(contrastive.color_jitter)(jax.random.PRNGKey(3), grey, 0.0), grey, atol=1e-5)
