"""optax factory: warmup + decay schedule, AdamW / SGD / LAMB / LARS, decay mask, clipping,
freezing by name (frozen parameters get no update and no optimizer state), layer-wise lr decay, and an
exponential moving average (EMA) of the parameters (`optim.ema_decay`), kept in the optimizer state.

Gradient accumulation is not done here (no optax.MultiSteps): the train step splits each batch into
`accum_steps` micro-batches and sums their gradients, so one call is one update and the schedule,
step counter and checkpoints all count updates.
"""
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ftjax import trees
from ftjax.errors import UserError
from ftjax.trees import names


def schedule(cfg_optim, cfg_sched, total_steps: int) -> optax.Schedule:
  lr, warm = cfg_optim.lr, int(cfg_sched.warmup_steps)
  if warm >= total_steps and cfg_sched.name != 'constant':
    raise UserError(f'schedule.warmup_steps={warm} must be below total_steps={total_steps}')
  decay_steps = max(1, total_steps - warm)
  end = lr * cfg_sched.end_factor
  if cfg_sched.name == 'cosine':
    after = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg_sched.end_factor)
  elif cfg_sched.name == 'linear':
    after = optax.linear_schedule(lr, end, decay_steps)
  elif cfg_sched.name == 'constant':
    after = optax.constant_schedule(lr)
  else:
    raise UserError(f'schedule.name={cfg_sched.name!r}; choose cosine, linear or constant')
  if not warm:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def decay_mask(params):
  """True where weight decay applies: kernels and embeddings (ndim >= 2), never biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def trainable_fn(cfg_optim):
  """params -> tree of bools (True = trains), from optim.trainable / optim.freeze; None if all train."""
  keep, freeze = cfg_optim.get('trainable', ''), cfg_optim.get('freeze', '')
  if not keep and not freeze:
    return None

  def fn(params):
    mask = jax.tree.map(lambda n: bool((not keep or re.search(keep, n)) and not (freeze and re.search(freeze, n))),
                        names(params))
    if not any(jax.tree.leaves(mask)):
      raise UserError(f'optim.trainable={keep!r} / optim.freeze={freeze!r} leave no parameter to train')
    return mask
  return fn


def layer_scale(decay: float, layer_of):
  """Multiplies each update by decay ** (L - layer): `layer_of(name)` gives a parameter's depth
  (0 = embeddings / stem) or None for the top (heads, pooler), which is L and keeps the full lr.
  Scaling the final update is the same as scaling the lr, decoupled weight decay included."""
  def factors(tree):
    n = names(tree)
    depth = jax.tree.map(lambda name: -1 if layer_of(name) is None else layer_of(name), n)
    top = 1 + max(jax.tree.leaves(depth), default=0)
    return jax.tree.map(lambda d: decay ** (top - (top if d < 0 else d)), depth)

  def update(updates, state, params=None):
    return jax.tree.map(lambda u, f: u * f, updates, factors(updates)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update), factors


class EmaState(NamedTuple):
  """The EMA lives in the optimizer state so that checkpoints, resume and sharding (parallel.state_shardings
  matches optimizer-state leaves to parameters by name) carry it as they carry Adam's moments."""
  ema_params: Any      # the parameters' tree; under optim.trainable / freeze frozen ones are optax.MaskedNode


_EMA_NAME = re.compile(r'^(?:.*?\.)?ema_params\.(.+)$')


def check_ema(cfg_optim):
  """One UserError naming the key, before any compute."""
  d = cfg_optim.get('ema_decay', 0.0)
  if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
    raise UserError(f'optim.ema_decay={d!r} must be in [0, 1) (0 = no EMA; e.g. 0.999)')
  if cfg_optim.get('ema_eval', False) and not d:
    raise UserError('optim.ema_eval=True needs an EMA to evaluate: set optim.ema_decay > 0 (e.g. 0.999)')


def ema(decay: float) -> optax.GradientTransformation:
  """ema = decay * ema + (1 - decay) * new params, starting at the initial parameters, without debiasing:
  an average started at the initial weights is not biased towards zero, so it needs no correction. Chained
  last, it sees the final updates, and `params + updates` are the new parameters bit for bit (as
  optax.apply_updates computes them). The updates pass through unchanged."""
  def init(params):
    return EmaState(jax.tree.map(jnp.copy, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('the EMA of the parameters needs them: call tx.update(grads, opt_state, params)')
    new = optax.apply_updates(params, updates)
    avg = jax.tree.map(lambda e, p: (decay * e + (1 - decay) * p).astype(e.dtype), state.ema_params, new)
    return updates, EmaState(avg)
  return optax.GradientTransformation(init, update)


def ema_of(opt_state) -> dict:
  """{parameter name: its EMA} found by name in an optimizer state: a live one, one restored without a
  target (nested dicts and lists) or a checkpoint's metadata tree alike. {} when it keeps no EMA; frozen
  parameters have none."""
  found = ((ema_name(name), leaf) for name, leaf in trees.flat(opt_state).items())
  return {name: leaf for name, leaf in found if name is not None}


def ema_name(name: str) -> str | None:
  """The parameter whose EMA the optimizer-state leaf `name` (dotted) is; None when it is not an EMA."""
  m = _EMA_NAME.match(name)
  return m.group(1) if m else None


def ema_params(params, opt_state):
  """`params` with each parameter that has an EMA in `opt_state` replaced by it (frozen ones, which never
  change, stay as they are): what evaluators score with optim.ema_eval. None when there is no EMA."""
  avg = ema_of(opt_state)
  if not avg:
    return None
  return jax.tree_util.tree_map_with_path(lambda path, p: avg.get(trees.dotted(path), p), params)


def ema_restart(opt_state, params):
  """`opt_state` with its EMA restarted at `params` (host arrays): weights loaded over a fresh init
  (init.source), whose EMA began at the random ones. Each goes where the EMA leaf it replaces lives."""
  flat = trees.flat(params)

  def put(path, x):
    name = ema_name(trees.dotted(path))
    return jax.device_put(flat[name], x.sharding) if name in flat else x
  return jax.tree_util.tree_map_with_path(put, opt_state)


def build(cfg_optim, cfg_sched, total_steps: int, layer_of=None):
  """Returns (optax transformation, schedule). `layer_of`: the model family's lr_layer, needed
  when optim.layer_decay != 1."""
  sched = schedule(cfg_optim, cfg_sched, total_steps)
  o, wd = cfg_optim, cfg_optim.weight_decay
  if o.name == 'adamw':
    tx = optax.adamw(sched, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=decay_mask)
  elif o.name == 'lamb':
    tx = optax.lamb(sched, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=wd, mask=decay_mask)
  elif o.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask) if wd else optax.identity(),
                     optax.sgd(sched, momentum=o.momentum or None, nesterov=o.nesterov))
  elif o.name == 'lars':
    # LARS as in SimCLR: no decay and no trust ratio on biases and norm parameters.
    tx = optax.lars(sched, weight_decay=wd, weight_decay_mask=decay_mask, trust_coefficient=o.trust_coefficient,
                    trust_ratio_mask=decay_mask, momentum=o.momentum, nesterov=o.nesterov)
  else:
    raise UserError(f'optim.name={o.name!r}; choose adamw, sgd, lamb or lars')
  decay = o.get('layer_decay', 1.0)
  if decay != 1.0:
    if not 0 < decay < 1:
      raise UserError(f'optim.layer_decay={decay} must be in (0, 1]')
    if layer_of is None:
      raise UserError('optim.layer_decay needs a model family that defines lr_layer (bert, resnet)')
    tx = optax.chain(tx, layer_scale(decay, layer_of)[0])
  if o.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm), tx)
  check_ema(o)
  if o.get('ema_decay', 0.0):     # inside multi_transform: frozen parameters keep no EMA (they do not change)
    tx = optax.chain(tx, ema(float(o.ema_decay)))
  trainable = trainable_fn(o)
  if trainable is not None:
    tx = optax.multi_transform({True: tx, False: optax.set_to_zero()}, trainable)
  if o.accum_steps < 1:
    raise UserError(f'optim.accum_steps={o.accum_steps} must be >= 1')
  return tx, sched
