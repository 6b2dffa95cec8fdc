"""optax factory: warmup + decay schedule, AdamW / SGD / LAMB / LARS, decay mask, clipping.

Gradient accumulation is not done here (no optax.MultiSteps): the train step splits each batch into
`accum_steps` micro-batches and sums their gradients, so one call is one update and the schedule,
step counter and checkpoints all count updates.
"""
import jax
import optax

from ftjax.errors import UserError


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


def build(cfg_optim, cfg_sched, total_steps: int):
  """Returns (optax transformation, schedule)."""
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
  if o.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm), tx)
  if o.accum_steps < 1:
    raise UserError(f'optim.accum_steps={o.accum_steps} must be >= 1')
  return tx, sched
