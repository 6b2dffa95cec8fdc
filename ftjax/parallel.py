"""Mesh from config and the shardings the trainer uses (jit + NamedSharding; no pmap)."""
import collections
import contextlib
import contextvars
import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ftjax import trees
from ftjax.errors import UserError


def make_mesh(shape, axes, devices=None) -> jax.sharding.Mesh:
  """`shape` may hold one -1, meaning all remaining devices (e.g. (-1,) = pure data parallel). A fully
  given shape smaller than one process's devices takes the first ones, e.g. (1,): one device of eight."""
  shape, axes = tuple(shape), tuple(axes)
  if devices is None:
    devices = jax.devices()
    if -1 not in shape and jax.process_count() == 1 and 0 < math.prod(shape) < len(devices):
      devices = devices[:math.prod(shape)]
  devices = list(devices)
  if len(shape) != len(axes):
    raise UserError(f'mesh_shape {shape} and mesh_axes {axes} differ in length')
  if shape.count(-1) > 1:
    raise UserError(f'mesh_shape {shape}: at most one -1')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise UserError(f'mesh_shape {shape} does not divide the {len(devices)} devices')
    shape = tuple(len(devices) // known if s == -1 else s for s in shape)
  if math.prod(shape) != len(devices):
    raise UserError(f'mesh_shape {shape} needs {math.prod(shape)} devices, found {len(devices)}')
  auto = (jax.sharding.AxisType.Auto,) * len(axes)   # shardings propagate; we annotate, XLA fills in
  if devices == jax.devices():
    return jax.make_mesh(shape, axes, auto, devices=devices)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), axes, axis_types=auto)


def replicated(mesh):
  return NamedSharding(mesh, P())


DATA_AXES = ('replica', 'data', 'fsdp')


def data_axes(mesh) -> tuple:
  """The mesh axes the batch is split over, in mesh order."""
  return tuple(a for a in mesh.axis_names if a in DATA_AXES)


def batch_sharding(mesh):
  """Leading (batch) dimension split over every mesh axis named like a data axis."""
  return NamedSharding(mesh, P(data_axes(mesh) or None))


def data_parallel_size(mesh) -> int:
  return math.prod(mesh.shape[a] for a in data_axes(mesh))


def global_batch(local_batch: dict, sharding) -> dict:
  """This process's slice of the batch -> one global jax.Array per key."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


class DevicePrefetch:
  """Keeps `size` batches already on the devices ahead of the train step, so the host-to-device copy
  of the next batches overlaps the current step instead of stalling it. get_state() is the input
  iterator's state after the last batch handed out, not after the ones read ahead: a checkpoint
  taken between steps resumes exactly at the next unseen batch."""

  def __init__(self, it, sharding, size: int = 2):
    self.it, self.sharding, self.size = it, sharding, max(int(size), 0)
    self.queue = collections.deque()
    self.state = it.get_state()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    try:
      while len(self.queue) < self.size + 1:     # device_put is asynchronous: these copies run now
        self.queue.append((global_batch(next(self.it), self.sharding), self.it.get_state()))
    except StopIteration:
      if not self.queue:
        raise
    batch, self.state = self.queue.popleft()
    return batch

  def get_state(self):
    return self.state


# ---- Sharding: logical axes (per model family) -> mesh axes (one rules table) --------------------
# Each model family names the logical axes of every parameter (`logical_axes(name, ndim)`) and of the
# activations it pins (`constrain`); config.sharding_rules maps a logical axis to mesh axes. A rule naming
# an axis the mesh lacks is ignored, so one table serves every strategy and the mesh picks it: ('data',)
# data parallel, ('fsdp',) parameters and optimizer state sharded over the data-parallel devices,
# ('data', 'model') tensor parallel, ('fsdp', 'model') both.
DEFAULT_RULES = (
    ('batch', DATA_AXES),     # activations' batch dimension (parallel.constrain), over every data axis
    ('embed', 'fsdp'),        # BERT hidden size, a ResNet's feature width
    ('conv_out', 'fsdp'),     # conv output channels, BatchNorm
    ('heads', 'model'),       # attention heads x head dim
    ('mlp', 'model'),         # BERT's intermediate size
    ('vocab', 'model'),
)


def _axis_size(mesh, axes):
  return math.prod(mesh.shape[a] for a in axes)


def spec_for(logical: tuple, shape: tuple, mesh, rules) -> P:
  """PartitionSpec for one array: each dimension takes its logical axis's mesh axes if the mesh has
  them, they are not used by an earlier dimension, and they divide the dimension; else replicated."""
  table = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in rules}
  used, out = set(), []
  for name, dim in zip(logical, shape):
    axes = tuple(a for a in table.get(name, ()) if a in mesh.axis_names and a not in used) if name else ()
    if axes and dim % _axis_size(mesh, axes) == 0 and _axis_size(mesh, axes) > 1:
      used.update(axes)
      out.append(axes[0] if len(axes) == 1 else axes)
    else:
      out.append(None)
  return P(*out)


def param_shardings(tree, mesh, rules, logical_axes):
  """NamedShardings for a tree of parameters (or BatchNorm statistics) named like the model's."""
  def one(path, x):
    logical = logical_axes(trees.dotted(path), len(x.shape)) if logical_axes else (None,) * len(x.shape)
    return NamedSharding(mesh, spec_for(tuple(logical), tuple(x.shape), mesh, rules))
  return jax.tree_util.tree_map_with_path(one, tree)


def state_shardings(abstract_state, mesh, rules, logical_axes):
  """Shardings for a TrainState: parameters and model state by rule; optimizer-state leaves follow
  the parameter whose path their own path ends with (Adam's mu / nu, momentum), else replicated."""
  params = param_shardings(abstract_state.params, mesh, rules, logical_axes)
  by_path = {trees.dotted(p): (s, tuple(x.shape)) for (p, s), x in zip(
      jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(abstract_state.params))}

  def opt(path, x):
    name = trees.dotted(path)
    for k, (s, shape) in by_path.items():
      if (name == k or name.endswith('.' + k)) and tuple(x.shape) == shape:
        return s
    return replicated(mesh)
  return abstract_state.replace(
      step=replicated(mesh), rng=replicated(mesh), params=params,
      model_state=param_shardings(abstract_state.model_state, mesh, rules, logical_axes),
      opt_state=jax.tree_util.tree_map_with_path(opt, abstract_state.opt_state))


def bytes_per_device(tree, shardings) -> int:
  """Bytes one device holds of `tree` (abstract or real arrays) under `shardings`."""
  total = 0
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shard = s.shard_shape(tuple(x.shape))
    total += math.prod(shard) * np.dtype(x.dtype).itemsize
  return total


# ---- Multi-process (multi-host) start-up ---------------------------------------------------------
def init_distributed(cfg) -> bool:
  """Starts JAX's multi-controller runtime when asked to: an explicit coordinator (config
  `distributed.coordinator` or $FTJAX_COORDINATOR, with the process count and this process's id), or
  what a TPU pod or a SLURM allocation provides (`distributed.auto`, or $SLURM_NTASKS > 1). Returns
  whether it did. A peer that stops answering heartbeats ends the others after
  `distributed.heartbeat_timeout` seconds instead of leaving them waiting."""
  import os
  coordinator = os.environ.get('FTJAX_COORDINATOR', cfg.coordinator)
  kw = dict(initialization_timeout=int(cfg.init_timeout), heartbeat_timeout_seconds=int(cfg.heartbeat_timeout))
  if coordinator:
    n = int(os.environ.get('FTJAX_NUM_PROCESSES', cfg.num_processes))
    i = int(os.environ.get('FTJAX_PROCESS_ID', cfg.process_id))
    if n < 1 or not 0 <= i < n:
      raise UserError(f'distributed: coordinator {coordinator} needs num_processes >= 1 and 0 <= process_id < '
                      f'num_processes (got {n}, {i}; $FTJAX_NUM_PROCESSES / $FTJAX_PROCESS_ID)')
    jax.distributed.initialize(coordinator, n, i, **kw)
    return True
  if cfg.auto or int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    jax.distributed.initialize(**kw)       # TPU pod metadata, or SLURM's environment
    return True
  return False


# ---- Activations ----------------------------------------------------------------------------------
_RULES = contextvars.ContextVar('ftjax_sharding_rules', default=DEFAULT_RULES)


@contextlib.contextmanager
def sharding(mesh, rules):
  """Traces steps under `mesh` with `rules` (config.sharding_rules), the table `constrain` reads: the
  same one the parameters were laid out with."""
  token = _RULES.set(tuple(rules))
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _RULES.reset(token)


def constrain(x, logical: tuple):
  """Pins an activation's sharding inside a step traced under `sharding(mesh, rules)` (the trainer does
  that), so XLA keeps activations split by batch (and by heads / MLP units under tensor parallelism)
  instead of replicating them. Outside a mesh context, or on one device, it does nothing."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, spec_for(tuple(logical), x.shape, mesh, _RULES.get()))
