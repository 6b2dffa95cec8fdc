"""Entry point: python -m ftjax.main --config=configs/X.py[:arg] --workdir=DIR [--config.key=value ...]

Any mistake a user can fix (bad override, missing data, unwritable workdir) ends the run before any
compute with one line on stderr, `ftjax: error: ...`, and exit status 2.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ftjax.errors import UserError

FLAGS = flags.FLAGS


def _define(fv, argv=None):
  # The config flag reads argv (sys.argv by default) when defined, to register its --config.<key> overrides.
  config_flags.DEFINE_config_file('config', None, 'Python config file, optionally with :arg', flag_values=fv,
                                  lock_config=True, sys_argv=argv)
  flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the resolved config', flag_values=fv)


_define(FLAGS)


def _fail(msg):
  print(f'ftjax: error: {msg}', file=sys.stderr, flush=True)
  sys.exit(2)


def _unknown_key(argv, err):
  """ml_collections reports an unknown override as a bare KeyError/AttributeError('name')."""
  name = str(err).strip('"\'')
  for a in argv:
    key = a.split('=', 1)[0]
    if key.startswith('--config.') and key.rsplit('.', 1)[-1] == name:
      return f'{key}: no such key in the config (check the spelling, or add it to the config file)'
  return f'bad config override: {type(err).__name__} {err}'


def _parse(argv, fv=FLAGS):
  try:
    rest = fv(argv)
    if fv['config'].present:
      fv.config.get('runs')  # a config file that failed to load raises only on first use
  except (KeyError, AttributeError) as e:
    _fail(_unknown_key(argv, e))
  except flags.Error as e:
    _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
  except Exception as e:  # errors raised while loading the config file itself
    _fail(f'cannot load --config: {" ".join(str(e).split())}')
  if not fv['config'].present:
    _fail('--config=configs/<file>.py[:arg] is required')
  if not fv.workdir:
    _fail('--workdir=<dir> is required')
  if len(rest) > 1:
    _fail(f'unexpected arguments: {" ".join(rest[1:])}')
  return rest


def _enable_compilation_cache():
  """Persist compiled XLA programs: reruns and resumes skip most compilation."""
  import jax
  path = os.environ.get('FTJAX_COMPILATION_CACHE', os.path.expanduser('~/.cache/ftjax/xla'))
  if path and path != 'off':
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def main(argv):
  del argv
  run_job(FLAGS.config, FLAGS.workdir)


def run_job(config, workdir):
  """A run or an experiment; a UserError ends it with one line and exit status 2."""
  logging.set_verbosity(logging.ERROR)   # library chatter; ftjax prints its own progress
  _enable_compilation_cache()
  from ftjax import experiment, parallel, train
  try:
    if 'distributed' in config:
      parallel.init_distributed(config.distributed)
    if 'runs' in config:
      experiment.run(config, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  except UserError as e:
    _fail(str(e))
  except Exception as e:                   # a lost peer surfaces as a failed collective
    import jax
    if jax.process_count() > 1 and type(e).__name__ == 'JaxRuntimeError':
      print(f'ftjax: error: process {jax.process_index()} lost contact with another process ({str(e).splitlines()[0]}); '
            'stopping. Start all processes again to resume from the last checkpoint.', file=sys.stderr, flush=True)
      os._exit(1)                          # no shutdown barrier: the peer is gone
    raise


def run():
  app.run(main, flags_parser=_parse)


def cli(argv) -> int:
  """`python -m ftjax.main ARGV[1:]` inside this process, returning its exit status: tests run many
  command lines in one process. Anything but a clean exit propagates, as it would print a traceback."""
  fv = flags.FlagValues()
  _define(fv, argv)
  try:
    _parse(argv, fv)
    run_job(fv.config, fv.workdir)
  except SystemExit as e:
    return 0 if e.code is None else e.code
  return 0


if __name__ == '__main__':
  run()
