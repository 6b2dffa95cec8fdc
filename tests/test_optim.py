"""Optimizers, schedules, weight-decay mask and clipping."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ftjax import defaults, optim
from ftjax.errors import UserError


def cfgs(schedule='constant', warmup_steps=0, end_factor=0.0, **optim_kw):
  c = defaults.base_config()
  c.optim.update(optim_kw)
  c.schedule.update(dict(name=schedule, warmup_steps=warmup_steps, end_factor=end_factor))
  return c.optim, c.schedule


def test_warmup_then_cosine_and_linear():
  o, s = cfgs(lr=1.0, warmup_steps=10, schedule='cosine')
  sched = optim.schedule(o, s, 110)
  assert float(sched(0)) == 0.0 and math.isclose(float(sched(5)), 0.5, rel_tol=1e-6)
  assert math.isclose(float(sched(10)), 1.0, rel_tol=1e-6)
  assert math.isclose(float(sched(60)), 0.5 * (1 + math.cos(math.pi * 0.5)), rel_tol=1e-5)
  assert float(sched(110)) < 1e-6
  o, s = cfgs(lr=2.0, schedule='linear', end_factor=0.5)
  sched = optim.schedule(o, s, 100)
  assert math.isclose(float(sched(50)), 1.5, rel_tol=1e-6) and math.isclose(float(sched(100)), 1.0, rel_tol=1e-6)
  o, s = cfgs(lr=0.3)
  assert math.isclose(float(optim.schedule(o, s, 5)(4)), 0.3, rel_tol=1e-6)


@pytest.mark.parametrize('name', ['adamw', 'sgd', 'lamb', 'lars'])
def test_weight_decay_skips_biases_and_norm_scales(name):
  params = {'dense': {'kernel': jnp.ones((3, 4)), 'bias': jnp.ones(4)}, 'norm': {'scale': jnp.ones(4)}}
  o, s = cfgs(name=name, lr=0.1, weight_decay=0.5)
  tx, _ = optim.build(o, s, 10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert float(jnp.abs(new['dense']['kernel'] - 1).max()) > 1e-4      # decayed
  np.testing.assert_array_equal(new['dense']['bias'], params['dense']['bias'])
  np.testing.assert_array_equal(new['norm']['scale'], params['norm']['scale'])


@pytest.mark.parametrize('name', ['adamw', 'sgd', 'lamb', 'lars'])
def test_each_optimizer_minimises_a_quadratic(name):
  o, s = cfgs(name=name, lr=0.05 if name != 'lars' else 1.0)
  tx, _ = optim.build(o, s, 200)
  params = {'w': jnp.full((4, 4), 3.0)}
  loss = lambda p: jnp.sum((p['w'] - 1.0) ** 2)
  state = tx.init(params)
  for _ in range(200):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.1 * 64


def test_clipping_bounds_the_update():
  o, s = cfgs(name='sgd', lr=1.0, momentum=0.0, clip_norm=0.5)
  tx, _ = optim.build(o, s, 10)
  params = {'w': jnp.zeros(3)}
  updates, _ = tx.update({'w': jnp.array([30.0, 40.0, 0.0])}, tx.init(params), params)
  np.testing.assert_allclose(updates['w'], [-0.3, -0.4, 0.0], rtol=1e-6)


def test_bad_optimizer_settings():
  with pytest.raises(UserError, match='adamw, sgd, lamb or lars'):
    optim.build(*cfgs(name='adagrad'), 10)
  with pytest.raises(UserError, match='warmup_steps'):
    optim.build(*cfgs(schedule='cosine', warmup_steps=20), 10)
