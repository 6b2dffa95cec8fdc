"""Task registry: `config.task.name` is a module under ftjax.tasks that defines `Task(cfg)`.

A task turns a model and a batch into (loss, metrics) for training and per-example outputs for
evaluators; the trainer knows nothing else about the objective.
"""
import importlib

from ftjax.errors import UserError


def build(cfg):
  try:
    mod = importlib.import_module(f'ftjax.tasks.{cfg.name}')
  except ModuleNotFoundError as e:
    if e.name != f'ftjax.tasks.{cfg.name}':
      raise
    raise UserError(f'unknown task {cfg.name!r}: no module ftjax/tasks/{cfg.name}.py') from None
  return mod.Task(cfg)
