"""Data: the embedded digits splits, deterministic and resumable pipelines, per-process shards,
eval coverage, local .npz / image-folder sources, image ops."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from ftjax import data
from ftjax.data import ops
from ftjax.errors import UserError


def input_cfg(**kw):
  c = ConfigDict(dict(dataset='ftjax_digits', data_dir='', train_split='train', batch_size=32, pp_train='',
                      pp_eval='', num_threads=2, prefetch=2))
  c.update(kw)
  return c


def _hashes(src):
  return [hashlib.md5(src[i]['image'].tobytes() + bytes([src[i]['label']])).hexdigest() for i in range(len(src))]


def test_digits_splits_are_fixed_and_disjoint(digits_ready):
  sizes = {k: len(v) for k, v in digits_ready.items()}
  assert sizes == {'train': 1257, 'validation': 270, 'test': 270}
  from sklearn.datasets import load_digits
  d = load_digits()
  ref = {hashlib.md5(np.minimum(img * 16, 255).astype(np.uint8)[..., None].tobytes() + bytes([int(t)])).hexdigest()
         for img, t in zip(d.images, d.target)}
  hashes = {k: set(_hashes(v)) for k, v in digits_ready.items()}
  assert set.union(*hashes.values()) <= ref       # every example is a real digit, with its own label
  assert not (hashes['train'] & hashes['test']) and not (hashes['train'] & hashes['validation'])
  ex = digits_ready['train'][0]
  assert ex['image'].dtype == np.uint8 and ex['image'].shape == (8, 8, 1) and 0 <= ex['label'] < 10


def test_train_iterator_is_deterministic_resumable_and_reshuffles(digits_ready):
  cfg = input_cfg(pp_train='random_crop(8, pad=1)')
  a, _ = data.train_iterator(cfg, seed=0)
  b, _ = data.train_iterator(cfg, seed=0)
  c, _ = data.train_iterator(cfg, seed=1)
  first = [next(a) for _ in range(5)]
  for x in first:
    y = next(b)
    np.testing.assert_array_equal(x['image'], y['image'])
  assert not np.array_equal(first[0]['label'], next(c)['label'])
  state = a.get_state()
  expected = [next(a) for _ in range(3)]
  d, _ = data.train_iterator(cfg, seed=0)
  d.set_state(state)
  for x in expected:
    np.testing.assert_array_equal(next(d)['image'], x['image'])
  # One epoch (1257 // 32 = 39 batches + remainder) later the order is different, not repeated.
  e, _ = data.train_iterator(input_cfg(batch_size=1257), seed=0)
  ep1, ep2 = next(e)['label'], next(e)['label']
  assert sorted(ep1) == sorted(ep2) and not np.array_equal(ep1, ep2)


def test_per_process_shards_are_disjoint_and_cover(tmp_path):
  n = 40
  path = tmp_path / 'ids.npz'
  images = np.arange(n, dtype=np.uint8)[:, None, None].repeat(2, 1).repeat(2, 2)
  np.savez(path, images=images, labels=np.arange(n) % 3)
  cfg = input_cfg(dataset=str(path), batch_size=40)   # 20 per process: a whole shard
  seen = []
  for p in range(2):
    it, total = data.train_iterator(cfg, seed=0, process_index=p, process_count=2)
    assert total == n
    seen.append(set(next(it)['image'][:, 0, 0, 0].tolist()))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))
  with pytest.raises(UserError, match='not divisible by the 3 processes'):
    data.train_iterator(cfg, seed=0, process_index=0, process_count=3)


def test_eval_batches_cover_every_example_once(tmp_path):
  n = 23
  path = tmp_path / 'e.npz'
  np.savez(path, images=np.arange(n, dtype=np.uint8)[:, None, None], labels=np.zeros(n, np.int64))
  cfg = input_cfg(dataset=str(path))
  got, counts = [], []
  for p in range(2):
    batches = list(data.eval_batches(cfg, 'validation', '', 8, process_index=p, process_count=2))
    counts.append(len(batches))
    for b in batches:
      assert b['image'].shape[0] == 4
      got += b['image'][b['_mask'] > 0][:, 0, 0, 0].tolist()
  assert counts[0] == counts[1] == 3
  assert sorted(got) == list(range(n))


def test_npz_split_template_and_slices(tmp_path):
  for split, n in (('train', 10), ('val', 4)):
    np.savez(tmp_path / f'{split}.npz', images=np.full((n, 5, 5, 3), n, np.uint8), labels=np.arange(n))
  tmpl = str(tmp_path / '{split}.npz')
  assert len(data.get_source(tmpl, 'train')) == 10 and len(data.get_source(tmpl, 'val')) == 4
  assert [data.get_source(tmpl, 'train[:30%]')[i]['label'] for i in range(3)] == [0, 1, 2]
  assert len(data.get_source(tmpl, 'train[30%:]')) == 7 and len(data.get_source(tmpl, 'train[-2:]')) == 2
  with pytest.raises(UserError, match='does not exist'):
    data.get_source(tmpl, 'test')
  np.savez(tmp_path / 'f.npz', images=np.zeros((3, 4, 4), np.float32), labels=np.zeros(3, np.int64))
  with pytest.raises(UserError, match='must be uint8'):
    data.get_source(str(tmp_path / 'f.npz'), 'train')


def test_image_folder_source(tmp_path):
  for k, cls in enumerate(['cat', 'dog']):
    (tmp_path / cls).mkdir()
    for i in range(3):
      Image.fromarray(np.full((6, 7, 3), 40 * k + i, np.uint8)).save(tmp_path / cls / f'{i}.png')
  src = data.get_source(str(tmp_path), 'train')
  assert len(src) == 6
  assert [src[i]['label'] for i in range(6)] == [0, 0, 0, 1, 1, 1]
  assert src[4]['image'].shape == (6, 7, 3) and src[4]['image'][0, 0, 0] == 41


def test_synthetic_source_is_deterministic():
  a = data.get_source('synthetic(n=20, size=8, classes=4)', 'train')
  b = data.get_source('synthetic(n=20, size=8, classes=4)', 'train')
  v = data.get_source('synthetic(n=20, size=8, classes=4)', 'validation')
  np.testing.assert_array_equal(a[3]['image'], b[3]['image'])
  assert not np.array_equal(a[3]['image'], v[3]['image'])
  assert a[3]['image'].shape == (8, 8, 3)


def test_importing_the_package_registers_every_op():
  """ops.py is a leaf registry: image_ops and text_ops fill it on `import ftjax.data`, not at the first parse."""
  out = subprocess.run([sys.executable, '-c', 'import ftjax.data.ops as o; import ftjax.data; print(sorted(o.OPS))'],
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == str(['central_crop', 'flip_lr', 'inception_crop', 'label', 'mlm_mask', 'normalize',
                             'random_crop', 'resize', 'resize_small', 'tokenize'])


def test_image_ops():
  rng = np.random.default_rng(0)
  img = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
  ex = {'image': img, 'label': 1}
  out = ops.parse('random_crop(8, pad=2)')(ex, rng)
  assert out['image'].shape == (8, 8, 3) and out['label'] == 1
  out = ops.parse('inception_crop(16)')(ex, rng)
  assert out['image'].shape == (16, 16, 3) and out['image'].dtype == np.uint8
  out = ops.parse('resize_small(5)|central_crop(5)')(ex, rng)
  assert out['image'].shape == (5, 5, 3)
  assert ops.parse('resize((20, 24))')(ex, rng)['image'].shape == (20, 24, 3)
  flips = [ops.parse('flip_lr')(ex, np.random.default_rng(s))['image'] for s in range(20)]
  assert any(np.array_equal(f, img[:, ::-1]) for f in flips) and any(np.array_equal(f, img) for f in flips)
  out = ops.parse('normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))')(ex, rng)
  np.testing.assert_allclose(out['image'], (img / 255.0 - 0.5) / 0.25, atol=1e-6)
  assert out['image'].dtype == np.float32
  # Same rng seed, same augmentation.
  f = ops.parse('inception_crop(8)|flip_lr')
  np.testing.assert_array_equal(f(ex, np.random.default_rng(3))['image'], f(ex, np.random.default_rng(3))['image'])
  with pytest.raises(UserError, match='unknown preprocessing op'):
    ops.parse('sharpen(2)')
  with pytest.raises(UserError, match='bad arguments'):
    ops.parse('random_crop(8, padding=2)')
