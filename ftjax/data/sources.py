"""Stage 1, sources: TFDS (array_record, the embedded builders digits.py / pydoc.py / sentiment.py
included), local .npz, image folders, .txt / .jsonl / .csv, Hugging Face `datasets` ('hf:...', the
[hf] extra), generated data; split slices.

A source has `len()` and `[i] -> example dict` ({'image': uint8 HxWxC, 'label': int}, or text
fields); grain does the rest. Every failure to find or read data is a UserError that names the
dataset and how to fix it.
"""
import contextlib
import fcntl
import glob
import os
import re
import zlib

import numpy as np

from ftjax.data.calls import parse_call
from ftjax.errors import UserError, brief, require

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


class HFSource:
  """A Hugging Face `datasets.Dataset` read row by row (Arrow, memory-mapped: nothing materialised),
  each row in the record format of the other sources."""

  def __init__(self, ds):
    self.ds = ds

  def __len__(self):
    return len(self.ds)

  def __getitem__(self, i):
    return {k: _hf_value(v) for k, v in self.ds[int(i)].items()}

  def label_column(self):
    """Integer labels (ClassLabel included) are checked against the model's classes before any compute."""
    feature = self.ds.features.get('label')
    dtype = getattr(feature, 'dtype', '')
    if not (isinstance(dtype, str) and dtype.startswith(('int', 'uint'))):
      return None
    return np.asarray(self.ds.select_columns(['label']).with_format('numpy')[:]['label'])


def _hf_value(v):
  """datasets' Python values as the ops read them: str stays str, numbers become numpy scalars, decoded
  images uint8 H x W x C (greyscale with C=1, as .npz and TFDS give it; the rest RGB, as image folders)."""
  if isinstance(v, (str, bytes)) or v is None:
    return v
  if isinstance(v, dict):
    return {k: _hf_value(x) for k, x in v.items()}
  if hasattr(v, 'getbands'):                       # PIL.Image.Image, from a datasets.Image feature
    if set(v.getbands()) <= {'1', 'L', 'I', 'F', 'A'}:
      return np.asarray(v.convert('L'))[..., None]
    return np.asarray(v.convert('RGB'))
  if isinstance(v, list) and v and isinstance(v[0], (str, bytes, dict)):
    return [_hf_value(x) for x in v]
  a = np.asarray(v)
  return a[()] if a.ndim == 0 else a               # a scalar as np.int64 / np.float64, a list as an array


def _hf_is_path(spec):
  """A path, never a name: '/x', './x', '~/x', a '*' glob, a .parquet file, or anything that exists."""
  return (spec.startswith(('/', '.', '~')) or any(c in spec for c in '*?[') or spec.endswith('.parquet')
          or os.path.exists(spec))


def _hf_source(spec, split):
  """spec (after 'hf:'): a save_to_disk directory, parquet files (a directory: splits named by file as
  `datasets` names them; a glob or one file: split 'train', or '{split}' in the path), or NAME[:CONFIG] in
  the local datasets cache (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE honoured by `datasets` itself).
  Not memoised: reopening is milliseconds (memory-mapped, parquet converted once into the datasets
  cache), and a dataset saved again in a notebook is read afresh."""
  where = f'dataset hf:{spec}'
  datasets = require('datasets', f'{where} (a Hugging Face dataset)', 'hf')
  datasets.disable_progress_bars()                 # stderr is for the run's own lines (and one error line)
  if _hf_is_path(spec):
    path = os.path.expanduser(spec.replace('{split}', split))
    files = sorted(glob.glob(path)) if any(c in path for c in '*?[') else [path] if os.path.isfile(path) else []
    if not files and not os.path.isdir(path):
      raise UserError(f'{where}: {path!r} does not exist; expected a save_to_disk directory, a directory or glob '
                      'of .parquet files, or a dataset name in the local datasets cache')
    try:
      if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in ('dataset_dict.json', 'state.json')):
        ds = datasets.load_from_disk(path)
      elif os.path.isdir(path):
        if not glob.glob(os.path.join(path, '**', '*.parquet'), recursive=True):
          raise UserError(f'{where}: directory {path!r} is neither a save_to_disk directory (no dataset_dict.json '
                          'or state.json) nor holds .parquet files')
        ds = datasets.load_dataset('parquet', data_dir=path)
      else:
        name = split if '{split}' in spec else 'train'
        ds = datasets.load_dataset('parquet', data_files={name: files})
    except UserError:
      raise
    except Exception as e:   # damaged Arrow / parquet files, a save_to_disk of another datasets version
      raise UserError(f'{where}: cannot read {path!r} ({type(e).__name__}: {brief(e)})') from None
  else:
    name, _, config = spec.partition(':')
    try:
      ds = datasets.load_dataset(name, config or None)
    except Exception as e:   # not in the cache (offline), no such config, ...
      raise UserError(f'{where}: cannot load {name!r}{f" config {config!r}" if config else ""} '
                      f'({type(e).__name__}: {brief(e)}); expected a dataset in the local datasets cache '
                      '(or a path: hf:./dir)') from None
  if isinstance(ds, datasets.DatasetDict):
    if split not in ds:
      raise UserError(f'{where}: no split {split!r}; it has {", ".join(map(repr, ds))}')
    ds = ds[split]
  elif split != str(ds.split or 'train'):
    raise UserError(f'{where}: no split {split!r}; it holds one split, {str(ds.split or "train")!r}')
  return HFSource(ds)


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


def is_fixed(dataset: str) -> bool:
  """A TFDS or synthetic dataset: the same examples every time this process reads it (a file can be rewritten)."""
  return bool(dataset) and not dataset.startswith('hf:') and (dataset.startswith('synthetic') or not (
      dataset.endswith(('.npz',) + TEXT_EXTS) or '/' in dataset or os.path.sep in dataset))


def get_source(dataset: str, split: str, data_dir: str = ''):
  """dataset: TFDS name | path to .npz, .txt, .jsonl, .csv or an image folder (may contain '{split}') |
  'hf:<path or name[:config]>' (_hf_source) | 'synthetic(...)' | 'synthetic_text(...)'."""
  if not dataset:
    raise UserError('config.input.dataset is empty; name a TFDS dataset, an .npz file or an image folder')
  m = _SLICE.match(split.replace(' ', ''))
  if not m:
    raise UserError(f'bad split {split!r}: expected NAME or NAME[lo:hi] (ints or percents)')
  if dataset.startswith('hf:'):
    src = _hf_source(dataset[3:], m['name'])
  elif dataset.startswith('synthetic'):
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
