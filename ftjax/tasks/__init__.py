"""Task registry: `config.task.name` is a module under ftjax.tasks that defines `Task(cfg)`.

A task turns a model and a batch into (loss, metrics) for training and per-example outputs for
evaluators; the trainer knows nothing else about the objective.
"""
from ftjax import registry


def build(cfg):
  return registry.load('tasks', cfg.name, 'task.name').Task(cfg)
