"""ftjax: pretrain and fine-tune encoders in JAX.

From Python: ftjax.get_config, ftjax.run, ftjax.load (ftjax/api.py), imported on first use so that
`import ftjax` (every entry point's first import) stays free of JAX.
"""

__version__ = "0.1.0"

_API = ('get_config', 'run', 'load', 'Loaded')
__all__ = [*_API, 'UserError']


def __getattr__(name):
  if name in _API:
    from ftjax import api
    return getattr(api, name)
  if name == 'UserError':      # what every user-fixable mistake raises
    from ftjax.errors import UserError
    return UserError
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(__all__))
