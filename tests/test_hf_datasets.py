"""Hugging Face `datasets` as a source ('hf:...'): datasets built here, in temporary directories, read
through get_source and one training run; no network (conftest sets HF_HUB_OFFLINE)."""
import glob
import os
import re
import sys

import datasets
import numpy as np
import pytest

from conftest import run_cli

from ftjax.data.sources import get_source
from ftjax.errors import UserError

NAMES = ('negative', 'neutral', 'positive')
WORDS = 'good bad fine great awful okay nice poor'.split()


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
  """parquet is converted to Arrow in the datasets cache: a test's own, not the user's."""
  monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', str(tmp_path / 'hf-cache'))


def text_split(n, offset):
  features = datasets.Features({'text': datasets.Value('string'), 'label': datasets.ClassLabel(names=list(NAMES))})
  return datasets.Dataset.from_dict({'text': [f'{WORDS[(offset + i) % 8]} day number {offset + i}' for i in range(n)],
                                     'label': [(offset + i) % 3 for i in range(n)]}, features=features)


def text_dict():
  return datasets.DatasetDict(train=text_split(64, 0), validation=text_split(20, 1000))


def check_text(src, n, offset):
  assert len(src) == n
  for i in range(n):
    ex = src[i]
    assert ex['text'] == f'{WORDS[(offset + i) % 8]} day number {offset + i}'
    assert isinstance(ex['label'], np.integer) and ex['label'] == (offset + i) % 3


def test_save_to_disk_splits_and_slices(tmp_path):
  text_dict().save_to_disk(tmp_path / 'disk')
  check_text(get_source(f'hf:{tmp_path}/disk', 'train[:10]'), 10, 0)
  check_text(get_source(f'hf:{tmp_path}/disk', 'train[-4:]'), 4, 60)
  check_text(get_source(f'hf:{tmp_path}/disk', 'validation'), 20, 1000)
  check_text(get_source(f'hf:{tmp_path}/disk', 'validation[50%:]'), 10, 1010)
  column = get_source(f'hf:{tmp_path}/disk', 'train[:10]').label_column()   # checked against the classes up front
  assert list(column) == [i % 3 for i in range(10)]


def test_parquet_directory_and_glob(tmp_path):
  (tmp_path / 'pq').mkdir()
  for name, split in text_dict().items():
    split.to_parquet(tmp_path / 'pq' / f'{name}.parquet')
  check_text(get_source(f'hf:{tmp_path}/pq', 'train[:10]'), 10, 0)             # a directory: splits by file name
  check_text(get_source(f'hf:{tmp_path}/pq', 'validation'), 20, 1000)
  check_text(get_source(f'hf:{tmp_path}/pq/{{split}}.parquet', 'validation[5:]'), 15, 1005)
  check_text(get_source(f'hf:{tmp_path}/pq/train*.parquet', 'train[2:7]'), 5, 2)   # a glob: split 'train'


def test_image_column(tmp_path):
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
  rgb = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  features = datasets.Features({'image': datasets.Image(), 'label': datasets.ClassLabel(num_classes=3)})
  for name, images in (('grey', grey), ('rgb', rgb)):
    datasets.Dataset.from_dict({'image': list(images), 'label': [i % 3 for i in range(6)]},
                               features=features).save_to_disk(tmp_path / name)
  src = get_source(f'hf:{tmp_path}/grey', 'train[1:]')
  assert len(src) == 5
  for i in range(5):
    image = src[i]['image']
    assert image.dtype == np.uint8 and image.shape == (8, 8, 1)       # greyscale keeps one channel
    np.testing.assert_array_equal(image[..., 0], grey[i + 1])
    assert src[i]['label'] == (i + 1) % 3
  src = get_source(f'hf:{tmp_path}/rgb', 'train')
  np.testing.assert_array_equal(np.stack([src[i]['image'] for i in range(6)]), rgb)


def test_training_run_on_a_saved_dataset(tmp_path):
  text_dict().save_to_disk(tmp_path / 'disk')
  pp = 'tokenize(max_len=16)|label("label")'
  r = run_cli('--config=configs/text_finetune.py:smoke', f'--workdir={tmp_path}/run',
              f'--config.input.dataset=hf:{tmp_path}/disk', f'--config.input.data_dir={tmp_path}',
              '--config.input.tokenizer=train:200', '--config.input.train_split=train[:48]',
              f'--config.input.pp_train={pp}', f'--config.input.pp_eval={pp}', '--config.total_steps=2',
              '--config.evals.eval.split=validation', '--config.evals.test.split=validation[:4]',
              '--config.evals.tfidf.split=validation[:4]')
  assert r.returncode == 0, r.stderr[-3000:]
  assert re.search(r'step +2/2 \| loss \d+\.\d+', r.stdout), r.stdout[-2000:]
  assert 'eval/examples 20.0000' in r.stdout and 'test/examples 4.0000' in r.stdout   # every validation row, once


def test_bad_input(tmp_path):
  with pytest.raises(UserError, match=f"'{tmp_path}/nope' does not exist") as e:
    get_source(f'hf:{tmp_path}/nope', 'train')
  assert '\n' not in str(e.value)
  text_dict().save_to_disk(tmp_path / 'disk')
  with pytest.raises(UserError, match=r"no split 'test'; it has 'train', 'validation'") as e:
    get_source(f'hf:{tmp_path}/disk', 'test[:5]')
  assert '\n' not in str(e.value) and f'{tmp_path}/disk' in str(e.value)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(UserError, match='neither a save_to_disk directory'):
    get_source(f'hf:{tmp_path}/empty', 'train')
  assert glob.glob(str(tmp_path / 'hf-cache' / '*')) == [] and os.listdir(tmp_path / 'empty') == []
  with pytest.raises(UserError, match="cannot load 'no_such_dataset_xyz' config 'cfg'.*local datasets cache"):
    get_source('hf:no_such_dataset_xyz:cfg', 'train')                         # offline: not in the cache


def test_without_the_hf_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'datasets', None)     # import datasets -> ImportError
  with pytest.raises(UserError, match=r"dataset hf:\./elsewhere .*pip install 'ftjax\[hf\]'"):
    get_source('hf:./elsewhere', 'train')
