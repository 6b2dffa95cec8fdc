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


MALLOC_TUNABLES = 'glibc.malloc.hugetlb=1'


def malloc_env(environ=os.environ, thp_path='/sys/kernel/mm/transparent_hugepage/enabled'):
  """The environment to re-execute with, or None where that would change nothing.

  XLA:CPU mallocs each execution's temporaries and outputs (717 MB a step when fine-tuning MiniLM).
  glibc's malloc serves blocks over 32 MB with a fresh mmap and unmaps them on free, so each step faults
  in ~190,000 new 4 KiB pages, each zeroed by the kernel: 23% of that step's CPU time was spent in the kernel.
  With glibc.malloc.hugetlb=1 those blocks are advised onto 2 MiB transparent huge pages (a few hundred
  faults a step). glibc reads tunables only when a process starts, hence the re-execution. None when:
  FTJAX_MALLOC=system, GLIBC_TUNABLES already sets a glibc.malloc tunable (the user's, or ours after the
  exec), glibc is older than 2.35 (no hugetlb tunable), or THP is off."""
  tunables = environ.get('GLIBC_TUNABLES', '')
  if sys.platform != 'linux' or environ.get('FTJAX_MALLOC') == 'system' or 'glibc.malloc.' in tunables:
    return None
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
    with open(thp_path) as f:
      thp = f.read()
  except (ValueError, OSError, AttributeError):  # not glibc, or no THP in this kernel
    return None
  if name != 'glibc' or tuple(int(v) for v in version.split('.')[:2]) < (2, 35) or '[never]' in thp:
    return None
  return {**environ, 'GLIBC_TUNABLES': ':'.join(filter(None, (tunables, MALLOC_TUNABLES)))}


def tune_malloc():
  """Called first by each `python -m ftjax.<entry>`: re-executes the same command line once with
  malloc_env (same PID, open files and arguments). The Python API cannot: export the variable first."""
  env = malloc_env()
  if env is not None and sys.executable:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
      os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:           # this interpreter cannot be run again: go on as started
      pass


def malloc_setting() -> str:
  """This process's glibc malloc tunables, for the bench's first line."""
  return os.environ.get('GLIBC_TUNABLES', '') or 'glibc defaults'


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
