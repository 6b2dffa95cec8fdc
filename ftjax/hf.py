"""transformers model directories <-> ftjax models (BERT, GPT-2, ResNet v1.5), both ways, without pickles.

The files are read by ftjax/hub.py (safetensors first). Each model family names its parameters after
transformers' modules and says how one maps to the other (`hf_name`: the name and a layout, 'T' for a
transposed dense kernel, 'conv' for HWIO <-> OIHW); this file only renames, re-lays-out and reports.
The base model's prefix (`bert.`, `transformer.`, `resnet.`) is optional on both sides, so a base checkpoint loads into
a model with a head and the reverse.
"""
import json
import os
import re

import jax
import numpy as np
from flax import nnx

from ftjax import models, trees
from ftjax.errors import UserError
from ftjax.hub import MODEL_TYPES, load_state_dict, read_config

IGNORED_SOURCE_KEYS = ('position_ids', 'cls.predictions.decoder.weight', 'cls.predictions.decoder.bias',
                       'num_batches_tracked',
                       '.attn.bias', '.attn.masked_bias',   # GPT-2's causal-mask buffers in old checkpoints
                       'lm_head.weight')                     # GPT-2's LM head: tied to wte
LAYOUTS = {None: (lambda w: w, lambda w: w), 'T': (np.transpose, np.transpose),
           'conv': (lambda w: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1))}   # (from hf, to hf)


def family(model_type: str):
  return models.get_module(MODEL_TYPES[model_type])


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
  shape in the checkpoint (head surgery); it is matched against transformers' and ftjax's names. Returns
  (params, model_state, report) with report = {'loaded', 'initialised', 'ignored'}: lists of transformers names."""
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
  """A transformers directory or Hugging Face Hub id (`org/name[@revision]`, ftjax/hub.py) -> (ftjax model
  in eval mode, report). `model_kwargs` go to the family's build (e.g. head='classification', num_labels=3
  for BERT; num_classes=10 for ResNet); parts absent from the checkpoint are freshly initialised and listed
  in report['initialised']."""
  model_type = read_config(path)['model_type']
  state_dict = load_state_dict(path)          # a damaged weights file fails before the model is built
  cfg = dict(name=MODEL_TYPES[model_type], config=path, **model_kwargs)
  graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: models.build(cfg, nnx.Rngs(seed))), nnx.Param, ...)
  p, s, report = convert_from_hf(state_dict, nnx.to_pure_dict(params), nnx.to_pure_dict(rest),
                                 source=path, model_type=model_type, reinit=reinit)
  p, s = fill_fresh((p, s), lambda: nnx.split(models.build(cfg, nnx.Rngs(seed)), nnx.Param, ...)[1:])
  nnx.replace_by_pure_dict(params, p)
  nnx.replace_by_pure_dict(rest, s)
  model = nnx.merge(graphdef, params, rest)
  model.eval()        # as transformers' from_pretrained: dropout off, BatchNorm statistics used; model.train() to train
  if verbose:
    print(describe(report, path), flush=True)
  return model, report


def fill_fresh(loaded, init):
  """`loaded` (a tree whose leaves the checkpoint did not give are jax.ShapeDtypeStruct) with those
  leaves from `init()` (a fresh init, the same tree of nnx States or dicts). Only they are computed: the
  loaded leaves leave the init's program, so XLA drops their random numbers (a MiniLM's random init,
  which its weights then overwrite, took ~10 s to compile on 2 CPU cores). The values are those of the
  whole init: each draws its key by name and count (nnx.Rngs)."""
  fresh = lambda x: isinstance(x, jax.ShapeDtypeStruct)

  def needed():
    tree = jax.tree.map(nnx.to_pure_dict, init(), is_leaf=lambda x: isinstance(x, nnx.State))
    return jax.tree.map(lambda a, b: b if fresh(a) else None, loaded, tree)

  made = models.initialize(needed)
  return jax.tree.map(lambda a, b: b if fresh(a) else a, loaded, made, is_leaf=lambda x: x is None)


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
