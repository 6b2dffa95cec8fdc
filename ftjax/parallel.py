"""Mesh from config and the shardings the trainer uses (jit + NamedSharding; no pmap)."""
import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ftjax.errors import UserError


def make_mesh(shape, axes, devices=None) -> jax.sharding.Mesh:
  """`shape` may hold one -1, meaning all remaining devices (e.g. (-1,) = pure data parallel)."""
  devices = list(devices if devices is not None else jax.devices())
  shape, axes = tuple(shape), tuple(axes)
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


def batch_sharding(mesh):
  """Leading (batch) dimension split over every mesh axis named like a data axis."""
  data_axes = tuple(a for a in mesh.axis_names if a in DATA_AXES)
  return NamedSharding(mesh, P(data_axes or None))


def data_parallel_size(mesh) -> int:
  return math.prod(mesh.shape[a] for a in mesh.axis_names if a in DATA_AXES)


def global_batch(local_batch: dict, sharding) -> dict:
  """This process's slice of the batch -> one global jax.Array per key."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
