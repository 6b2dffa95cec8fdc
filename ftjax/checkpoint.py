"""Orbax checkpoints: the latest K for resume, plus the best one by a validation metric.

`workdir/checkpoints/<step>` holds {state: TrainState, data: train-iterator state}; saves are async
(arrays are copied to host before `save` returns, so donated buffers are safe). `workdir/best/<step>`
keeps one checkpoint, replaced only when the chosen metric improves. Orbax writes to a temporary
directory and renames it, so an interrupted save never leaves a checkpoint that looks complete; a
checkpoint damaged afterwards (truncated files, lost metadata) is reported and the next older one
restored instead, the damaged one moved to `workdir/damaged/` so that the run can save that step again.
"""
import contextlib
import io
import logging
import os
import shutil
import sys
import time

import jax
import orbax.checkpoint as ocp

from ftjax import trees
from ftjax.errors import UserError, brief


class Checkpointer:

  def __init__(self, workdir: str, cfg):
    self.cfg, self.workdir = cfg, os.path.abspath(workdir)

    def options(name, **kw):
      # Each manager its own barrier names: multi-process saves of the latest and the best checkpoint
      # at the same step would otherwise meet on one barrier ("already ongoing") and abort.
      return ocp.CheckpointManagerOptions(
          enable_async_checkpointing=cfg.async_save, create=True,
          multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name), **kw)

    self.latest = ocp.CheckpointManager(os.path.join(self.workdir, 'checkpoints'), item_names=('state', 'data'),
                                        options=options('latest', max_to_keep=max(1, cfg.keep)))
    self.best = None
    self.best_value = None
    if cfg.best_metric:
      sign = 1 if cfg.best_mode == 'max' else -1
      self.best = ocp.CheckpointManager(
          os.path.join(self.workdir, 'best'), item_names=('state', 'data'),
          options=options('best', max_to_keep=1, best_fn=lambda m: sign * m[cfg.best_metric], best_mode='max'))
      step = self.best.best_step()
      if step is not None:
        try:
          self.best_value = self.best.metrics(step)[cfg.best_metric]
        except Exception as e:   # lost metrics: the next evaluation becomes the best so far
          print(f'note: {self.workdir}/best/{step} has no readable {cfg.best_metric} ({brief(e)}); '
                'best-checkpoint tracking starts afresh', flush=True)

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

  def restore(self, abstract_state, set_data_state):
    """Restores the newest checkpoint that restores onto the shardings in `abstract_state` (a tree
    of jax.ShapeDtypeStruct) and whose data state `set_data_state` accepts; returns (state, step).
    Each newer one that fails is reported in one line and moved to workdir/damaged/."""
    where = os.path.join(self.workdir, 'checkpoints')
    failed = []
    for step in _step_dirs(where):
      try:
        with _quiet():
          try:
            restored = self.latest.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
            set_data_state(restored['data'])
          except Exception:
            time.sleep(3.0)    # the failed restore's other reads finish (and complain) while muted, under load too
            logging.getLogger('asyncio').addFilter(_UNRETRIEVED)
            raise
      except Exception as e:   # whatever Orbax, TensorStore or the iterator raise for damaged files
        print(f'checkpoint {where}/{step} does not restore ({brief(e)}); trying the next older one',
              flush=True)
        failed.append(step)
        continue
      for bad in failed:
        self._move_aside(bad)
      return restored['state'], step
    raise UserError(f'no checkpoint in {where} restores (steps {", ".join(map(str, failed))} are damaged); '
                    f'remove {where} to start the run afresh (or move it away to keep it)')

  def _move_aside(self, step: int):
    """Damaged step folders leave checkpoints/ (kept for inspection), so the run can save those steps again."""
    if jax.process_index() == 0:
      dest = os.path.join(self.workdir, 'damaged', f'{step}.{time.strftime("%Y%m%d-%H%M%S")}')
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      shutil.move(os.path.join(self.workdir, 'checkpoints', str(step)), dest)
      print(f'  moved the damaged checkpoint to {dest}', flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'ftjax_moved_damaged_{step}')
    self.latest.reload()

  def wait(self):
    self.latest.wait_until_finished()
    if self.best is not None:
      self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    if self.best is not None:
      self.best.close()


def _step_dirs(folder: str) -> list[int]:
  """Step folders, newest first, whether or not Orbax would list them (an empty one is damaged too)."""
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted((int(n) for n in names if n.isdigit()), reverse=True)


def has_checkpoints(workdir: str) -> bool:
  return bool(_step_dirs(os.path.join(workdir, 'checkpoints')))


class _Unretrieved(logging.Filter):
  """Reads a failed restore abandoned can end, whenever they are garbage-collected (at exit too, after any
  pause), in asyncio's 'Task exception was never retrieved' and a traceback: the one line said it already."""

  def filter(self, record):
    return 'exception was never retrieved' not in record.getMessage()


_UNRETRIEVED = _Unretrieved()


@contextlib.contextmanager
def _quiet():
  """Orbax and TensorStore log a traceback per failing read, and reads still in flight when one fails
  print more from their threads as they finish: the caller reports the failure in one line instead."""
  loggers = [logging.getLogger(n) for n in ('', 'absl', 'orbax', 'asyncio')]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL + 1)
  stderr, sys.stderr = sys.stderr, io.StringIO()
  try:
    yield
  finally:
    sys.stderr = stderr
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


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
    steps = _step_dirs(d)
    if steps:
      return os.path.join(d, str(steps[0]))
  return None


def read_params(source: str, ema=None):
  """(params, model_state, step folder) as saved by ftjax in `source` (see find_step_dir). Restored
  on the host, without needing the model that wrote them. `ema` (optim.ema_params, for init.weights=ema):
  (params, saved optimizer state) -> the parameters' EMA in their place, or None if it keeps none."""
  step_dir = find_step_dir(source)
  if step_dir is None:
    raise UserError(f'init.source={source!r}: no ftjax checkpoint there (expected <workdir>/checkpoints/<step>)')
  restored = ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'state'))
  params = restored['params']
  if ema is not None:
    params = ema(params, restored.get('opt_state', {}))
    if params is None:
      raise UserError(no_ema('init.weights=ema', step_dir))
  return params, restored.get('model_state', {}), step_dir


def no_ema(what: str, step_dir: str) -> str:
  return (f'{what}: {step_dir} holds no EMA of the parameters (a run keeps one with optim.ema_decay > 0); '
          'use its raw parameters instead (init.weights=params, optim.ema_eval=False)')


def abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
