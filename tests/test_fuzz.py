"""Fuzz suite: damaged inputs, generated systematically, through the real command line.

Each case runs `python -m ftjax.main` (in this process, through `ftjax.main.cli`, so the cases share
one JAX start-up) and asserts exit status 2, exactly one `ftjax: error:` line naming what is wrong,
no traceback (any other exception would fail the test), and the workdir left as it was. Damaged
checkpoints are different: the run falls back to the next older one and continues exactly.
"""
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import run_cli, run_main

SETTINGS = settings(max_examples=4, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DIGITS = 'configs/resnet_digits.py:smoke'
TEXT = 'configs/bert_finetune_sentiment.py:smoke'


def cli(tmp_path, *args, config=DIGITS):
  """Runs the command line in this process on a workdir that does not exist yet; returns the error line."""
  workdir = tmp_path / 'no_such_workdir_yet'
  r = run_cli(f'--config={config}', f'--workdir={workdir}', *args, one_device=False)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2, r.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith('ftjax: error: '), lines
  assert 'Traceback' not in r.stderr
  assert not workdir.exists(), sorted(os.listdir(workdir))        # nothing created, nothing written
  return lines[0]


def text_args(path, *extra):
  """The text smoke config on a local file: train and evaluation splits are slices of it."""
  pp = 'tokenize(max_len=16)|label("label", names=("negative", "neutral", "positive"))'
  return [f'--config.input.dataset={path}', '--config.input.train_split=train[:48]',
          f'--config.input.pp_train={pp}', f'--config.input.pp_eval={pp}',
          '--config.evals.eval.split=train[48:]', '--config.evals.test.split=train[48:]',
          '--config.evals.tfidf.split=train[48:]', *extra]


def npz(path, images=None, labels=None, n=64):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8) if images is None else images
  np.savez(path, images=images, labels=np.arange(n) % 10 if labels is None else labels)
  return path


def rows(n=64):
  words = 'good bad fine great awful okay nice poor'.split()
  return [{'text': f'{words[i % 8]} day number {i}', 'label': ['negative', 'neutral', 'positive'][i % 3]}
          for i in range(n)]


def write_csv(path, table, columns=('text', 'label')):
  import csv
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.DictWriter(f, fieldnames=list(columns), extrasaction='ignore')
    w.writeheader()
    w.writerows(table)
  return path


# ---- .npz -------------------------------------------------------------------------------------------
@SETTINGS
@given(cut=st.floats(0.0, 0.999))
def test_truncated_npz(tmp_path, cut):
  good = npz(tmp_path / 'good.npz')
  raw = good.read_bytes()
  bad = tmp_path / 'bad.npz'
  bad.write_bytes(raw[:int(cut * len(raw))])
  line = cli(tmp_path, f'--config.input.dataset={bad}')
  assert 'bad.npz' in line


@SETTINGS
@given(classes=st.integers(2, 9), bad=st.one_of(st.integers(-1000, -1), st.integers(10, 10**6)), at=st.integers(0, 63))
def test_labels_outside_the_models_classes(tmp_path, classes, bad, at):
  labels = np.arange(64) % classes
  labels[at] = bad if bad < 0 else classes + bad % 100
  path = npz(tmp_path / 'labels.npz', labels=labels)
  line = cli(tmp_path, f'--config.input.dataset={path}', f'--config.model.num_classes={classes}')
  assert 'labels.npz' in line and f'model.num_classes={classes}' in line and str(labels[at]) in line


@SETTINGS
@given(which=st.sampled_from(['images', 'labels']),
       dtype=st.sampled_from([np.float32, np.float64, np.int16, np.int64, np.bool_]))
def test_npz_with_wrong_dtypes(tmp_path, which, dtype):
  if which == 'labels' and np.issubdtype(dtype, np.integer):
    dtype = np.float32     # integer labels of any width are fine
  images = np.zeros((64, 8, 8), np.uint8)
  labels = np.arange(64) % 10
  path = npz(tmp_path / 'types.npz', images=images.astype(dtype) if which == 'images' else images,
             labels=labels.astype(dtype) if which == 'labels' else labels)
  line = cli(tmp_path, f'--config.input.dataset={path}')
  assert 'types.npz' in line and which in line


# ---- CSV / JSONL / txt ----------------------------------------------------------------------------
@SETTINGS
@given(drop=st.sampled_from(['text', 'label']))
def test_csv_without_a_configured_column(tmp_path, drop):
  kept = [c for c in ('text', 'label', 'extra') if c != drop]
  path = write_csv(tmp_path / 'cols.csv', [{**r, 'extra': 'x'} for r in rows()], kept)
  line = cli(tmp_path, *text_args(path), config=TEXT)
  assert 'cols.csv' in line and repr(drop) in line


@SETTINGS
@given(kind=st.sampled_from(['csv', 'jsonl', 'txt']), at=st.floats(0, 1),
       byte=st.sampled_from([b'\x80', b'\xbf', b'\xff', b'\xfe', b'\xc3(']))
def test_text_files_that_are_not_utf8(tmp_path, kind, at, byte):
  path = tmp_path / f'enc.{kind}'
  if kind == 'csv':
    write_csv(path, rows())
  elif kind == 'jsonl':
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows()))
  else:
    path.write_text('\n\n'.join(r['text'] for r in rows()))
  raw = path.read_bytes()
  pos = int(at * len(raw))
  path.write_bytes(raw[:pos] + byte + raw[pos:])
  line = cli(tmp_path, *text_args(path), config=TEXT)
  assert f'enc.{kind}:' in line and 'UTF-8' in line


@SETTINGS
@given(line_no=st.integers(0, 63), cut=st.floats(0.05, 0.95))
def test_jsonl_cut_inside_a_line(tmp_path, line_no, cut):
  lines = [json.dumps(r) for r in rows()]
  lines[line_no] = lines[line_no][:max(1, int(cut * len(lines[line_no])))]   # a strict prefix of an object
  path = tmp_path / 'cut.jsonl'
  path.write_text('\n'.join(lines[:line_no + 1]) + '\n')
  line = cli(tmp_path, *text_args(path), config=TEXT)
  assert f'cut.jsonl:{line_no + 1}:' in line


@SETTINGS
@given(row=st.integers(0, 63), cut=st.integers(1, 30))
def test_csv_with_a_short_row(tmp_path, row, cut):
  path = write_csv(tmp_path / 'short.csv', rows())
  text = path.read_text().splitlines()
  text[row + 1] = text[row + 1].rsplit(',', 1)[0][:cut]                      # the label column is gone
  path.write_text('\n'.join(text) + '\n')
  line = cli(tmp_path, *text_args(path), config=TEXT)
  assert f'short.csv:{row + 2}:' in line and 'header' in line


@pytest.mark.parametrize('content', ['', 'text,label\n', '\n\n  \n'])
def test_empty_text_files(tmp_path, content):
  path = tmp_path / ('empty.csv' if 'label' in content else 'empty.txt')
  path.write_text(content)
  line = cli(tmp_path, *text_args(path), config=TEXT)
  assert path.name in line and 'no documents' in line


def test_jsonl_rows_that_are_not_objects_or_lack_a_field(tmp_path):
  path = tmp_path / 'list.jsonl'
  path.write_text(json.dumps(rows()[0]) + '\n[1, 2]\n')
  assert 'list.jsonl:2: expected a JSON object' in cli(tmp_path, *text_args(path), config=TEXT)
  table = rows()
  del table[0]['label']
  path = tmp_path / 'missing.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in table))
  line = cli(tmp_path, *text_args(path), config=TEXT)
  assert 'missing.jsonl' in line and "'label'" in line


# ---- image folders and TFDS -----------------------------------------------------------------------
@settings(SETTINGS, max_examples=3)
@given(victim=st.integers(0, 11), how=st.sampled_from(['truncate', 'garbage', 'empty']))
def test_image_folder_with_a_damaged_file(tmp_path, victim, how):
  from PIL import Image
  root = tmp_path / 'images'
  files = []
  for k in range(12):
    (root / f'c{k % 3}').mkdir(parents=True, exist_ok=True)
    files.append(root / f'c{k % 3}' / f'{k:02d}.png')
    Image.fromarray(np.full((8, 8, 3), k * 20, np.uint8)).save(files[-1])
  raw = files[victim].read_bytes()
  files[victim].write_bytes({'truncate': raw[:len(raw) // 2], 'garbage': b'not an image' * 7, 'empty': b''}[how])
  r = run_cli(f'--config={DIGITS}', f'--workdir={tmp_path / "w"}', f'--config.input.dataset={root}',
              '--config.input.batch_size=8', '--config.input.train_split=train[:12]', '--config.total_steps=3',
              '--config.evals.eval.split=train', '--config.evals.test.split=train', '--config.model.in_channels=3',
              '--config.input.pp_train=resize(8)|normalize(0.5, 0.5)', '--config.input.pp_eval=resize(8)|normalize(0.5, 0.5)',
              one_device=False)
  lines = r.stderr.strip().splitlines()
  # A damaged file deep in a folder is found when the pipeline reaches it (folders are read lazily):
  # one line naming it, exit 2, whenever that is.
  assert r.returncode == 2 and len(lines) == 1 and files[victim].name in lines[0], r.stderr[-2000:]


def test_tfds_dataset_without_the_fields_the_ops_read(tmp_path, digits_ready):
  line = cli(tmp_path, '--config.input.dataset=ftjax_digits', '--config.input.train_split=train',
             '--config.evals.eval.split=validation', '--config.evals.test.split=test', '--config.evals.tfidf.every=0',
             '--config.evals.tfidf.split=test', config=TEXT)
  assert "'ftjax_digits'" in line and "'text'" in line and "'image'" in line


# ---- non-finite values ----------------------------------------------------------------------------
def test_diverging_run_stops_without_writing_nan(tmp_path):
  r = run_cli(f'--config={DIGITS}', f'--workdir={tmp_path}', '--config.optim.name=sgd', '--config.optim.lr=1e12',
               '--config.optim.clip_norm=0.0', '--config.schedule.warmup_steps=0', '--config.log_every=1')
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith('ftjax: error:')]
  assert r.returncode == 2 and len(lines) == 1 and 'train/' in lines[0], r.stderr[-2000:]
  assert ' is nan at step' in lines[0] or ' is inf at step' in lines[0]
  assert 'Traceback' not in r.stderr
  with open(tmp_path / 'metrics.jsonl') as f:
    values = [v for row in map(json.loads, f) for v in row.values()]
  assert values and all(np.isfinite(values))
  assert not os.path.exists(tmp_path / 'checkpoints') or not os.listdir(tmp_path / 'checkpoints')


def test_check_finite_names_every_bad_value():
  from ftjax import train
  train.check_finite({'a': 1.0, 'b': -2.5}, 3, 'eval')
  for bad in (float('nan'), float('inf'), -float('inf')):
    with pytest.raises(train.NonFiniteError, match=rf'eval/loss is {bad} at step 7 \(eval\)'):
      train.check_finite({'eval/accuracy': 0.5, 'eval/loss': bad}, 7, 'eval')


# ---- damaged checkpoints: fall back to the next older one, resume exactly --------------------------
CKPT = [f'--config={DIGITS}', '--config.total_steps=30', '--config.checkpoint.every=5', '--config.checkpoint.keep=6',
        '--config.log_every=1', '--config.evals.eval.every=10']


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _truncate_arrays(step_dir):
  data = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, 'state')) for f in fs
          if os.sep + 'd' + os.sep in os.path.join(d, f)]
  assert data
  for f in data:
    with open(f, 'r+b') as h:
      h.truncate(os.path.getsize(f) // 3)


DAMAGE = {      # newest first: the resume meets them in this order
    30: ('truncated arrays', _truncate_arrays),
    25: ('missing metadata', lambda d: [os.remove(os.path.join(d, 'state', '_METADATA')),
                                        os.remove(os.path.join(d, '_CHECKPOINT_METADATA'))]),
    20: ('empty step folder', lambda d: [shutil.rmtree(d), os.mkdir(d)]),
    15: ('half-written step folder', lambda d: shutil.rmtree(os.path.join(d, 'state'))),
    10: ('damaged data-iterator state', lambda d: open(os.path.join(d, 'data', 'metadata'), 'w').write('{"next_ind')),
}


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, digits_ready):
  wd = str(tmp_path_factory.mktemp('ckpt') / 'ref')
  r = run_main(*CKPT, f'--workdir={wd}')     # its own process: all it prints, Orbax's threads too
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(map(int, os.listdir(os.path.join(wd, 'checkpoints')))) == [5, 10, 15, 20, 25, 30]
  return wd


def test_damaged_checkpoints_fall_back_to_the_newest_good_one_and_resume_exactly(tmp_path, finished_run):
  """Five kinds of damage, one per checkpoint, newest first: each is reported in one line and moved
  aside, step 5 restores, and steps 6-30 come out as the uninterrupted run's, bit for bit."""
  wd = str(tmp_path / 'w')
  shutil.copytree(finished_run, wd)
  for step, (_, damage) in DAMAGE.items():
    damage(os.path.join(wd, 'checkpoints', str(step)))
  r = run_main(*CKPT, f'--workdir={wd}')     # its own process: all it prints, Orbax's threads too
  assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  notes = [ln for ln in r.stdout.splitlines() if 'does not restore' in ln]
  assert [f'{wd}/checkpoints/{step} does not restore' in ln for step, ln in zip(DAMAGE, notes)] == [True] * 5, notes
  assert f'resumed from {wd}/checkpoints/5' in r.stdout
  assert _rows(wd) == _rows(finished_run)
  assert sorted(map(int, os.listdir(os.path.join(wd, 'checkpoints')))) == [5, 10, 15, 20, 25, 30]
  assert sorted(int(n.split('.')[0]) for n in os.listdir(os.path.join(wd, 'damaged'))) == sorted(DAMAGE)


def test_no_checkpoint_restores_one_error_naming_what_to_remove(tmp_path, finished_run):
  wd = str(tmp_path / 'w')
  shutil.copytree(finished_run, wd)
  for step in os.listdir(os.path.join(wd, 'checkpoints')):
    _truncate_arrays(os.path.join(wd, 'checkpoints', step))
  r = run_main(*CKPT, f'--workdir={wd}')     # its own process: all it prints, Orbax's threads too
  lines = [ln for ln in r.stderr.splitlines() if ln.startswith('ftjax: error:')]
  assert r.returncode == 2 and len(lines) == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  assert f'remove {wd}/checkpoints' in lines[0]
  assert len(os.listdir(os.path.join(wd, 'checkpoints'))) == 6 and not os.path.exists(os.path.join(wd, 'damaged'))
  assert _rows(wd) == _rows(finished_run)
