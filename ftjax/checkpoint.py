"""Orbax checkpoints: the latest K for resume, plus the best one by a validation metric.

`workdir/checkpoints/<step>` holds {state: TrainState, data: train-iterator state}; saves are async
(arrays are copied to host before `save` returns, so donated buffers are safe). `workdir/best/<step>`
keeps one checkpoint, replaced only when the chosen metric improves. Orbax writes to a temporary
directory and renames it, so an interrupted save never leaves a checkpoint that looks complete.
"""
import os

import jax
import orbax.checkpoint as ocp

from ftjax import trees
from ftjax.errors import UserError


class Checkpointer:

  def __init__(self, workdir: str, cfg):
    self.cfg = cfg
    opts = dict(enable_async_checkpointing=cfg.async_save, create=True)
    self.latest = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, 'checkpoints')), item_names=('state', 'data'),
        options=ocp.CheckpointManagerOptions(max_to_keep=max(1, cfg.keep), **opts))
    self.best = None
    self.best_value = None
    if cfg.best_metric:
      sign = 1 if cfg.best_mode == 'max' else -1
      self.best = ocp.CheckpointManager(
          os.path.abspath(os.path.join(workdir, 'best')), item_names=('state', 'data'),
          options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: sign * m[cfg.best_metric],
                                               best_mode='max', **opts))
      step = self.best.best_step()
      if step is not None:
        self.best_value = self.best.metrics(step)[cfg.best_metric]

  @staticmethod
  def _args(state, data_state):
    return ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))

  def save(self, step: int, state, data_state: dict):
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=self._args(state, data_state), force=True)

  def maybe_save_best(self, step: int, state, data_state: dict, metrics: dict) -> bool:
    """Saves when metrics[best_metric] beats the best so far; returns whether it did."""
    if self.best is None or self.cfg.best_metric not in metrics:
      return False
    v = float(metrics[self.cfg.best_metric])
    better = self.best_value is None or (v > self.best_value if self.cfg.best_mode == 'max' else v < self.best_value)
    if better and step not in self.best.all_steps():
      self.best.save(step, args=self._args(state, data_state), metrics={self.cfg.best_metric: v}, force=True)
      self.best_value = v
    return better

  def latest_step(self):
    return self.latest.latest_step()

  def restore(self, abstract_state, step=None):
    """Restores onto the shardings in `abstract_state` (a tree of jax.ShapeDtypeStruct)."""
    step = self.latest.latest_step() if step is None else step
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored['state'], restored['data']

  def wait(self):
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    if self.best is not None:
      self.best.close()


def merge_by_name(target: dict, source: dict, reinit: str = '', where: str = 'init.source'):
  """Copies source leaves into target where paths agree, except paths matching the regex `reinit`.
  A shape disagreement outside `reinit` is an error. Returns (merged tree, report of loaded /
  initialised / ignored paths)."""
  import re
  src = trees.flat(source)
  loaded, initialised, leaves = [], [], []
  for key, value in trees.flat(target).items():
    if key not in src or (reinit and re.search(reinit, key)):
      leaves.append(value)
      initialised.append(key)
      continue
    if tuple(src[key].shape) != tuple(value.shape):
      raise UserError(f'{where}: {key} has shape {tuple(src[key].shape)} there but {tuple(value.shape)} in the '
                      f'model; to train it afresh set init.reinit to a pattern matching it, e.g. '
                      f'{key.split(".")[0]!r}')
    leaves.append(jax.numpy.asarray(src[key], value.dtype))
    loaded.append(key)
  ignored = sorted(set(src) - set(loaded))
  return (jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), leaves),
          {'loaded': loaded, 'initialised': initialised, 'ignored': ignored})


def find_step_dir(source: str) -> str | None:
  """The checkpoint folder `source` names: a workdir (its latest in checkpoints/, else best/), one of
  those folders (its latest step), or a step folder itself; None if there is none."""
  src = os.path.abspath(os.path.expanduser(source))
  for sub in ('checkpoints', 'best', ''):
    d = os.path.join(src, sub) if sub else src
    if os.path.isdir(os.path.join(d, 'state')):
      return d
    steps = sorted((int(n) for n in os.listdir(d) if n.isdigit()), reverse=True) if os.path.isdir(d) else []
    if steps:
      return os.path.join(d, str(steps[0]))
  return None


def read_params(source: str):
  """(params, model_state, step folder) as saved by ftjax in `source` (see find_step_dir). Restored
  on the host, without needing the model that wrote them."""
  step_dir = find_step_dir(source)
  if step_dir is None:
    raise UserError(f'init.source={source!r}: no ftjax checkpoint there (expected <workdir>/checkpoints/<step>)')
  restored = ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'state'))
  return restored['params'], restored.get('model_state', {}), step_dir


def abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
