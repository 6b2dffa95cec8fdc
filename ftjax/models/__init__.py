"""Model registry: `config.model.name` is a module under ftjax.models that defines `build(cfg, rngs)`."""
import importlib

import jax.numpy as jnp
from flax import nnx

from ftjax.errors import UserError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def dtype(name: str):
  if name not in DTYPES:
    raise UserError(f'model.dtype={name!r}; choose one of {", ".join(DTYPES)}')
  return DTYPES[name]


def get_module(name: str):
  try:
    return importlib.import_module(f'ftjax.models.{name}')
  except ModuleNotFoundError as e:
    if e.name != f'ftjax.models.{name}':
      raise
    raise UserError(f'unknown model {name!r}: no module ftjax/models/{name}.py') from None


def build(cfg, rngs: nnx.Rngs) -> nnx.Module:
  """Builds the model named by cfg.name from the rest of cfg (a ConfigDict or dict)."""
  kwargs = dict(cfg)
  name = kwargs.pop('name')
  return get_module(name).build(kwargs, rngs)
