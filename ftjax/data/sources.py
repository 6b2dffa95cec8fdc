"""Stage 1, sources: TFDS (array_record, the embedded builders digits.py / pydoc.py / sentiment.py
included), local .npz, image folders, .txt / .jsonl / .csv, generated data; split slices.

A source has `len()` and `[i] -> example dict` ({'image': uint8 HxWxC, 'label': int}, or text
fields); grain does the rest. Every failure to find or read data is a UserError that names the
dataset and how to fix it.
"""
import contextlib
import fcntl
import os
import re
import zlib

import numpy as np

from ftjax.data.calls import parse_call
from ftjax.errors import UserError

EMBEDDED = ('ftjax_digits', 'ftjax_pydoc', 'ftjax_sentiment')   # TFDS builders of ours, built on first use
TEXT_EXTS = ('.txt', '.jsonl', '.csv')
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')
_SLICE = re.compile(r'^(?P<name>[^\[\]]+)(\[(?P<lo>-?\d*%?):(?P<hi>-?\d*%?)\])?$')


def _slice_bounds(n, lo, hi):
  def pos(s, default):
    if not s:
      return default
    v = int(s.rstrip('%'))
    v = round(n * v / 100) if s.endswith('%') else v
    return v + n if v < 0 else v
  return max(0, pos(lo, 0)), min(n, pos(hi, n))


class ArraySource:
  """In-memory images + labels (npz files, generated data)."""

  def __init__(self, images, labels):
    self.images, self.labels = images, labels

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, i):
    return {'image': self.images[i], 'label': int(self.labels[i])}

  def label_column(self):
    return self.labels


class FolderSource:
  """root/<class_name>/<image file>; classes sorted by name give label ids."""

  def __init__(self, root):
    self.classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    self.files = [(os.path.join(root, c, f), k) for k, c in enumerate(self.classes)
                  for f in sorted(os.listdir(os.path.join(root, c))) if f.lower().endswith(IMAGE_EXTS)]
    if not self.files:
      raise UserError(f'image folder {root!r} has no <class>/<image> files ({", ".join(IMAGE_EXTS)})')

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    from PIL import Image
    path, label = self.files[i]
    try:
      with Image.open(path) as im:
        return {'image': np.asarray(im.convert('RGB')), 'label': label}
    except (OSError, ValueError, SyntaxError) as e:   # PIL: unreadable, truncated or not an image
      raise UserError(f'image file {path}: cannot be read as an image ({" ".join(str(e).split())[:200]}); '
                      'remove or replace it') from None

  def label_column(self):
    return np.array([k for _, k in self.files])


class SlicedSource:
  def __init__(self, src, lo, hi):
    self.src, self.lo, self.n = src, lo, max(0, hi - lo)

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return self.src[self.lo + i]

  def label_column(self):
    column = getattr(self.src, 'label_column', lambda: None)()
    return None if column is None else column[self.lo:self.lo + self.n]


def _load_npz(path):
  import zipfile
  try:
    with np.load(path, allow_pickle=False) as z:
      keys = set(z.files)
      img_key = next((k for k in ('images', 'image', 'x') if k in keys), None)
      lab_key = next((k for k in ('labels', 'label', 'y') if k in keys), None)
      if img_key is None or lab_key is None:
        raise UserError(f'{path}: expected arrays "images" and "labels", found {sorted(keys)}')
      images, labels = z[img_key], z[lab_key]
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:   # truncated, not a zip, damaged member
    raise UserError(f'cannot read {path} as an .npz archive ({type(e).__name__}: {" ".join(str(e).split())[:200]}); '
                    'expected numpy.savez output with "images" and "labels"') from None
  if len(images) != len(labels):
    raise UserError(f'{path}: "{img_key}" has {len(images)} rows but "{lab_key}" has {len(labels)}; '
                    'they must have one label per image')
  if images.dtype != np.uint8 or images.ndim not in (3, 4):
    raise UserError(f'{path}: "{img_key}" must be uint8 N x H x W [x C], got {images.dtype} {images.shape}')
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f'{path}: "{lab_key}" must be a 1-D integer array, got {labels.dtype} {labels.shape}')
  return ArraySource(images[..., None] if images.ndim == 3 else images, labels)


def _load_text(path):
  """Local text: .txt (one document per blank-line-separated paragraph), .jsonl (one JSON object a
  line), .csv (a header row). UTF-8 only: a file in another encoding is an error, not mojibake."""
  import csv
  import io
  import json
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    content = raw.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b'\n') + 1
    raise UserError(f'{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8') from None
  if '\x00' in content:
    raise UserError(f'{path}: holds NUL bytes, so it is not a text file (UTF-16 or binary?); save it as UTF-8 text')
  rows = []
  if path.endswith('.txt'):
    rows = [{'text': d.strip()} for d in re.split(r'\n\s*\n', content) if d.strip()]
  elif path.endswith('.jsonl'):
    for n, line in enumerate(content.splitlines(), 1):
      if line.strip():
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise UserError(f'{path}:{n}: not valid JSON ({e.msg} at column {e.colno})') from None
        if not isinstance(row, dict):
          raise UserError(f'{path}:{n}: expected a JSON object per line, got {type(row).__name__}')
        rows.append(row)
  else:
    try:
      reader = csv.DictReader(io.StringIO(content, newline=''))
      for row in reader:
        if None in row or None in row.values():
          raise UserError(f'{path}:{reader.line_num}: {len(row) - (None in row)} fields where the header '
                          f'names {len(reader.fieldnames)} ({", ".join(reader.fieldnames)})')
        rows.append(row)
    except csv.Error as e:
      raise UserError(f'{path}: not a valid CSV file ({e})') from None
  if not rows:
    raise UserError(f'{path}: no documents (the file is empty{", or has a header only" if path.endswith(".csv") else ""})')
  return ListSource(rows)


class ListSource:
  def __init__(self, rows):
    self.rows = rows

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return self.rows[i]


def as_text(x) -> str:
  """TFDS Text features arrive as bytes; invalid UTF-8 is replaced, never fatal."""
  return x.decode('utf-8', errors='replace') if isinstance(x, (bytes, np.bytes_)) else str(x)


def synthetic(n=256, size=32, channels=3, classes=10, seed=0):
  """Generated images whose class sets the position of a bright band: learnable, no files."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % classes
  images = rng.integers(0, 96, size=(n, size, size, channels), dtype=np.uint8)
  band = max(1, size // classes)
  for c in range(classes):
    lo = (c * size) // classes
    images[labels == c, lo:lo + band] += 128
  return ArraySource(images, labels)


def synthetic_text(n=256, classes=2, pair=False, seed=0):
  """Generated sentences whose label sets which words dominate: text smoke runs, no files."""
  rng = np.random.default_rng(seed)
  common = 'the a of and to in is it that was for on are with as his they at be this from'.split()
  topical = [f'word{c}x{k}' for c in range(classes) for k in range(5)]
  rows = []
  for i in range(n):
    label = i % classes
    def sentence(label=label):
      words = list(rng.choice(common, 8)) + [topical[label * 5 + k] for k in rng.integers(0, 5, 3)]
      return ' '.join(rng.permutation(words))
    row = {'text': sentence(), 'label': label}
    if pair:
      row['text_pair'] = sentence()
    rows.append(row)
  return ListSource(rows)


@contextlib.contextmanager
def lock(path):
  """Exclusive file lock: one process builds a shared artefact (dataset, vocabulary), the others wait."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _tfds_source(name, split, data_dir):
  import tensorflow_datasets as tfds
  from ftjax.data import digits, pydoc, sentiment  # noqa: F401  registers the embedded builders
  data_dir = data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends
    raise UserError(f'dataset {name!r}: not a TFDS dataset, nor an existing .npz file or image folder '
                    f'({type(e).__name__}: {str(e).splitlines()[0]})') from None
  if not builder.is_prepared():
    if name in EMBEDDED:
      with lock(os.path.join(os.path.dirname(os.path.dirname(builder.data_dir)), f'.{name}.lock')):
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
          print(f'building the embedded dataset {name} in {builder.data_dir} (once)', flush=True)
          tfds.disable_progress_bar()
          builder.download_and_prepare(file_format='array_record')
    else:
      raise UserError(
          f'dataset {name!r} is not prepared in {builder.data_dir}; prepare it once with '
          f'`tfds build {name} --data_dir={os.path.dirname(os.path.dirname(builder.data_dir))} '
          '--file_format=array_record` '
          '(some datasets need manual downloads; see the TFDS catalog), or set --config.input.data_dir')
  try:
    return builder.as_data_source(split=split)
  except Exception as e:
    raise UserError(f'dataset {name!r} split {split!r}: {str(e).splitlines()[0]} '
                    '(data sources need the array_record file format)') from None


def get_source(dataset: str, split: str, data_dir: str = ''):
  """dataset: TFDS name | path to .npz, .txt, .jsonl, .csv or an image folder (may contain '{split}') |
  'synthetic(...)' | 'synthetic_text(...)'."""
  if not dataset:
    raise UserError('config.input.dataset is empty; name a TFDS dataset, an .npz file or an image folder')
  m = _SLICE.match(split.replace(' ', ''))
  if not m:
    raise UserError(f'bad split {split!r}: expected NAME or NAME[lo:hi] (ints or percents)')
  if dataset.startswith('synthetic'):
    name, args, kwargs = parse_call(dataset)
    gen = {'synthetic': synthetic, 'synthetic_text': synthetic_text}.get(name)
    if gen is None:
      raise UserError(f'dataset {dataset!r}: choose synthetic(...) or synthetic_text(...)')
    src = gen(*args, **{'seed': zlib.crc32(m['name'].encode()), **kwargs})
  elif dataset.endswith(('.npz',) + TEXT_EXTS) or '/' in dataset or os.path.sep in dataset:
    path = os.path.expanduser(dataset.replace('{split}', m['name']))
    if not os.path.exists(path):
      raise UserError(f'dataset path {path!r} (split {m["name"]!r}) does not exist')
    if path.endswith('.npz'):
      src = _load_npz(path)
    elif path.endswith(TEXT_EXTS):
      src = _load_text(path)
    else:
      src = FolderSource(path)
  else:
    return _tfds_source(dataset, split, data_dir)   # TFDS slices natively
  lo, hi = _slice_bounds(len(src), m['lo'], m['hi'])
  return src if (lo, hi) == (0, len(src)) else SlicedSource(src, lo, hi)
