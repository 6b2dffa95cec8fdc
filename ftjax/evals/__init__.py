"""Evaluator registry: `config.evals.<name>.type` is a module under ftjax.evals defining `Evaluator`.

An evaluator is built once (data, jitted functions) and called with the train state; it returns
metrics already prefixed with its name, e.g. {'eval/accuracy': 0.97}.
"""
from ftjax import registry


def build(name, cfg, **context):
  return registry.load('evals', cfg.type, f'evals.{name}.type').Evaluator(name, cfg, **context)
