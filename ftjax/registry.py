"""Components are found by name: `<package>.<name>` is imported on demand (big_vision's way), so
adding a model, task or evaluator is one new file and no registration code."""
import importlib

from ftjax.errors import UserError


def load(package: str, name: str, what: str):
  """Imports `ftjax.<package>.<name>`; an unknown name is a UserError naming the missing file."""
  module = f'ftjax.{package}.{name}'
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name != module:
      raise
    raise UserError(f'{what}={name!r}: no module ftjax/{package}/{name}.py') from None
