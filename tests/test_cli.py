"""Bad input: one clear `ftjax: error:` line, non-zero exit, nothing left that breaks a rerun."""
import json
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT, main_env, run_cli

SMOKE = '--config=configs/resnet_digits.py:smoke'


def error_line(proc):
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('ftjax: error:')]
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  assert len(lines) == 1, proc.stderr[-2000:]
  return lines[0]


def test_unknown_override_key_fails_before_compute(tmp_path):
  wd = tmp_path / 'w'
  line = error_line(run_cli(SMOKE, f'--workdir={wd}', '--config.model.no_such_key=3'))
  assert 'no_such_key' in line
  assert not wd.exists()


def test_wrong_type_override_names_the_key(tmp_path):
  wd = tmp_path / 'w'
  line = error_line(run_cli(SMOKE, f'--workdir={wd}', '--config.total_steps=abc'))
  assert 'total_steps' in line
  assert not wd.exists()


def test_missing_dataset_then_rerun_in_same_workdir_works(tmp_path, digits_ready):
  wd = tmp_path / 'w'
  line = error_line(run_cli(SMOKE, f'--workdir={wd}', '--config.input.dataset=no_such_dataset_xyz'))
  assert 'no_such_dataset_xyz' in line
  # A real TFDS name that is not prepared: the message says how to prepare it.
  line = error_line(run_cli(SMOKE, f'--workdir={wd}', '--config.input.dataset=mnist',
                             f'--config.input.data_dir={tmp_path / "empty"}'))
  assert "'mnist' is not prepared" in line and 'tfds build mnist' in line
  assert not (wd / 'checkpoints').exists()
  # The failed attempts left nothing that stops the corrected command.
  ok = run_cli(SMOKE, f'--workdir={wd}', '--config.total_steps=4', '--config.evals.eval.every=0')
  assert ok.returncode == 0, ok.stderr[-3000:]
  cfg = json.loads((wd / 'config.json').read_text())
  assert cfg['input']['dataset'] == 'ftjax_digits' and cfg['total_steps'] == 4
  assert os.listdir(wd / 'checkpoints') == ['4']


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  line = error_line(run_cli(SMOKE, f'--workdir={blocker / "sub"}'))
  assert 'workdir' in line and str(blocker / 'sub') in line


def test_npz_with_mismatched_lengths(tmp_path):
  path = tmp_path / 'bad.npz'
  np.savez(path, images=np.zeros((10, 8, 8), np.uint8), labels=np.zeros(9, np.int64))
  wd = tmp_path / 'w'
  line = error_line(run_cli(SMOKE, f'--workdir={wd}', f'--config.input.dataset={path}'))
  assert 'bad.npz' in line and '10' in line and '9' in line
  assert not (wd / 'checkpoints').exists() and not (wd / 'config.json').exists()


def test_missing_required_flags():
  line = error_line(run_cli(SMOKE))
  assert '--workdir' in line


def run_python(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=main_env(), capture_output=True, text=True,
                        timeout=300)


def test_evaluate_and_aot_fail_like_main(tmp_path):
  """Every entry point parses its flags through ftjax.cli: the same one-line errors and exit status."""
  wd = tmp_path / 'w'
  line = error_line(run_python('-m', 'ftjax.evaluate', SMOKE, f'--workdir={wd}', '--config.model.no_such_key=3'))
  assert '--config.model.no_such_key: no such key in the config' in line
  line = error_line(run_python('-m', 'ftjax.evaluate', SMOKE, f'--workdir={wd}', '--only=probe'))
  assert "--only: no evaluator ['probe'] in the config" in line
  line = error_line(run_python('-m', 'ftjax.aot', SMOKE, '--devices=2'))
  assert line == 'ftjax: error: --workdir=<dir> is required'
  assert not wd.exists()


def test_cli_stands_alone_and_evaluate_does_not_import_main():
  """ftjax.cli imports nothing from ftjax, and no entry point imports another: no import cycle."""
  r = run_python('-c', 'import sys, ftjax.cli; print(sorted(m for m in sys.modules if m.startswith("ftjax"))); '
                       'import ftjax.evaluate, ftjax.aot, ftjax.train, ftjax.state; print("ftjax.main" in sys.modules)')
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.splitlines() == ["['ftjax', 'ftjax.cli']", 'False'], r.stdout


def test_without_torch_the_core_runs_and_what_needs_torch_says_which_extra(tmp_path):
  """torch is an extra (demo, bench, test): the core imports without it; reading a pytorch_model.bin and
  the benchmark's PyTorch peer each stop with one line naming the extra."""
  (tmp_path / 'pytorch_model.bin').write_bytes(b'not read')
  code = ("import sys; sys.modules['torch'] = None\n"          # as if torch were not installed
          "import ftjax, ftjax.train, ftjax.hf, ftjax.api\n"
          "from ftjax import hub\n"
          "from ftjax.errors import UserError\n"
          "try:\n"
          f"  hub._read_torch_bin({str(tmp_path / 'pytorch_model.bin')!r})\n"
          "except UserError as e:\n"
          "  print(e)\n"
          "from ftjax import bench\n"
          "bench.main(['--models=bert_base_mlm', '--smoke'])\n")
  r = run_python('-c', code)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert r.stdout.strip() == (f"{tmp_path}/pytorch_model.bin: reading a pytorch_model.bin (there is no "
                              "model.safetensors) needs torch, which ftjax's core install leaves out: pip install "
                              "'ftjax[bench]' (from a checkout: pip install -e '.[bench]')")
  assert r.stderr.strip().splitlines()[-1] == (
      "bench: python -m ftjax.bench (its PyTorch peer; --no_torch times ftjax alone) needs torch, which ftjax's "
      "core install leaves out: pip install 'ftjax[bench]' (from a checkout: pip install -e '.[bench]')")


# A process that logs each start, then re-executes itself as every `python -m ftjax.<entry>` does, and prints
# the minor page faults per call of a jitted function whose 128 MB output is allocated (and freed) anew each call.
FAULTS = '''
import os, resource, sys
open(sys.argv[1], 'a').write('start\\n')
from ftjax import cli
cli.tune_malloc()
import jax, jax.numpy as jnp
f, x = jax.jit(lambda x: x * 2), jnp.ones(32 * 2 ** 20)
for _ in range(2):
  f(x).block_until_ready()
r = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r) // 5, os.environ.get('GLIBC_TUNABLES', ''))
'''


def _faults(log, **env):
  p = subprocess.run([sys.executable, '-c', FAULTS, str(log)], capture_output=True, text=True, timeout=120,
                     env={**main_env(), **env})
  assert p.returncode == 0, p.stderr[-2000:]
  faults, _, tunables = p.stdout.strip().splitlines()[-1].partition(' ')
  return tunables, int(faults), log.read_text().count('start')


def test_entry_points_re_execute_once_with_huge_page_malloc_and_stop_faulting_in_every_step(tmp_path):
  from ftjax import cli
  env = cli.malloc_env(dict(os.environ, GLIBC_TUNABLES=''))
  tunables, faults, starts = _faults(tmp_path / 'tuned')
  untuned, base, base_starts = _faults(tmp_path / 'system', FTJAX_MALLOC='system')
  assert (untuned, base_starts) == ('', 1)
  assert base > 25_000                              # 128 MB in 4 KiB pages, each call: what the tuning removes
  if env is None:                                   # no THP or an old glibc here: nothing to gain, no re-exec
    assert (tunables, starts) == ('', 1)
  else:
    assert (tunables, starts) == (cli.MALLOC_TUNABLES, 2)
    assert faults < base / 20, (faults, base)


def test_malloc_env_respects_the_users_tunables_and_opt_out(tmp_path):
  from ftjax import cli
  thp = tmp_path / 'thp'
  thp.write_text('always [madvise] never\n')
  name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  hugetlb = name == 'glibc' and tuple(int(v) for v in version.split('.')[:2]) >= (2, 35)   # the tunable's glibc
  assert (cli.malloc_env({}, str(thp)) is not None) == hugetlb
  assert cli.malloc_env({'FTJAX_MALLOC': 'system'}, str(thp)) is None
  assert cli.malloc_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, str(thp)) is None
  if hugetlb:
    assert cli.malloc_env({'GLIBC_TUNABLES': 'glibc.rtld.nns=4', 'A': '1'}, str(thp)) == {
        'GLIBC_TUNABLES': f'glibc.rtld.nns=4:{cli.MALLOC_TUNABLES}', 'A': '1'}
  thp.write_text('always madvise [never]\n')
  assert cli.malloc_env({}, str(thp)) is None
  assert cli.malloc_env({}, str(tmp_path / 'absent')) is None
