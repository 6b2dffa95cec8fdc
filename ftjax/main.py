"""Entry point: python -m ftjax.main --config=configs/X.py[:arg] --workdir=DIR [--config.key=value ...]

Any mistake a user can fix (bad override, missing data, unwritable workdir) ends the run before any
compute with one line on stderr, `ftjax: error: ...`, and exit status 2.
"""
import os
import sys

from absl import app, flags

from ftjax import cli as cli_flags
from ftjax.errors import UserError

FLAGS = flags.FLAGS
cli_flags.define(FLAGS)


def main(argv):
  del argv
  run_job(FLAGS.config, FLAGS.workdir)


def run_job(config, workdir):
  """A run or an experiment (ftjax.run); a UserError ends it with one line and exit status 2."""
  from ftjax import api
  try:
    api.run(config, workdir)
  except UserError as e:
    cli_flags.fail(str(e))
  except Exception as e:                   # a lost peer surfaces as a failed collective
    import jax
    if jax.process_count() > 1 and type(e).__name__ == 'JaxRuntimeError':
      print(f'ftjax: error: process {jax.process_index()} lost contact with another process ({str(e).splitlines()[0]}); '
            'stopping. Start all processes again to resume from the last checkpoint.', file=sys.stderr, flush=True)
      os._exit(1)                          # no shutdown barrier: the peer is gone
    raise


def run():
  cli_flags.tune_malloc()
  app.run(main, flags_parser=cli_flags.parse)


def cli(argv) -> int:
  """`python -m ftjax.main ARGV[1:]` inside this process, returning its exit status: tests run many
  command lines in one process. Anything but a clean exit propagates, as it would print a traceback."""
  fv = flags.FlagValues()
  cli_flags.define(fv, argv)
  try:
    cli_flags.parse(argv, fv)
    run_job(fv.config, fv.workdir)
  except SystemExit as e:
    return 0 if e.code is None else e.code
  return 0


if __name__ == '__main__':
  run()
