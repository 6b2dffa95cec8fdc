"""Command-line plumbing shared by every entry point (ftjax.main, ftjax.evaluate, ftjax.aot): the
--config / --workdir flags, their parsing, and the one-line `ftjax: error: ...` exit with status 2.

It imports nothing from ftjax, so that an entry point can use it without pulling in the trainer or
another entry point (evaluate.py once imported main.py, which imports experiment.py, which imports evaluate.py).
"""
import os
import sys

from absl import flags
from ml_collections import config_flags

EXIT_USER_ERROR = 2


def define(fv=flags.FLAGS, argv=None):
  """--config and --workdir on `fv`. The config flag reads `argv` (sys.argv by default) when defined, to
  register its --config.<key> overrides."""
  config_flags.DEFINE_config_file('config', None, 'Python config file, optionally with :arg', flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the resolved config', flag_values=fv)


def fail(msg):
  """Ends the process the way every user-fixable mistake ends: one line on stderr, exit status 2."""
  print(f'ftjax: error: {msg}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def unknown_key(argv, err) -> str:
  """ml_collections reports an unknown override as a bare KeyError/AttributeError('name'): name the flag."""
  name = str(err).strip('"\'')
  for a in argv:
    key = a.split('=', 1)[0]
    if key.startswith('--config.') and key.rsplit('.', 1)[-1] == name:
      return f'{key}: no such key in the config (check the spelling, or add it to the config file)'
  return f'bad config override: {type(err).__name__} {err}'


def parse(argv, fv=flags.FLAGS):
  """absl's flags_parser: parses `argv` into `fv` (flags defined by `define`, plus any the entry point
  adds), loading the config file now so that a broken one fails here, in one line, before any compute."""
  try:
    rest = fv(argv)
    if fv['config'].present:
      fv.config.get('runs')  # a config file that failed to load raises only on first use
  except (KeyError, AttributeError) as e:
    fail(unknown_key(argv, e))
  except flags.Error as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except Exception as e:  # errors raised while loading the config file itself
    fail(f'cannot load --config: {" ".join(str(e).split())}')
  if not fv['config'].present:
    fail('--config=configs/<file>.py[:arg] is required')
  if not fv.workdir:
    fail('--workdir=<dir> is required')
  if len(rest) > 1:
    fail(f'unexpected arguments: {" ".join(rest[1:])}')
  return rest


def enable_compilation_cache():
  """Persist compiled XLA programs: reruns and resumes skip most compilation. Programs that compiled in
  under $FTJAX_COMPILATION_CACHE_MIN_SECS (default 1 s) are not worth the disk; the tests, which start
  many short processes on the same programs, cache them all."""
  import jax
  path = os.environ.get('FTJAX_COMPILATION_CACHE', os.path.expanduser('~/.cache/ftjax/xla'))
  if path and path != 'off':
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs',
                      float(os.environ.get('FTJAX_COMPILATION_CACHE_MIN_SECS', '1')))
