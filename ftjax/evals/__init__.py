"""Evaluator registry: `config.evals.<name>.type` is a module under ftjax.evals defining `Evaluator`.

An evaluator is built once (data, jitted functions) and called with the train state; it returns
metrics already prefixed with its name, e.g. {'eval/accuracy': 0.97}.
"""
import importlib

from ftjax.errors import UserError


def build(name, cfg, **context):
  try:
    mod = importlib.import_module(f'ftjax.evals.{cfg.type}')
  except ModuleNotFoundError as e:
    if e.name != f'ftjax.evals.{cfg.type}':
      raise
    raise UserError(f'evals.{name}.type={cfg.type!r}: no module ftjax/evals/{cfg.type}.py') from None
  return mod.Evaluator(name, cfg, **context)
