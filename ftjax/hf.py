"""transformers model directories <-> ftjax models (BERT, GPT-2, ResNet v1.5), both ways, without pickles.

The files are read by ftjax/hub.py (safetensors first). Each model family names its parameters after
transformers' modules and says how one maps to the other (`hf_name`: the name and a layout, 'T' for a
transposed dense kernel, 'conv' for HWIO <-> OIHW); this file only renames, re-lays-out and reports.
The base model's prefix (`bert.`, `transformer.`, `resnet.`) is optional on both sides, so a base checkpoint loads into
a model with a head and the reverse. LoRA adapters travel alone in PEFT's format (save_adapters / load_adapters).
A model with stacked layers (model.scan_layers: one [num_layers, ...] parameter per layer parameter, the
family's `layer_index_at` says where the index goes) reads and writes transformers' per-layer tensors.
"""
import json
import math
import os
import re
import sys

import jax
import numpy as np
from flax import nnx

from ftjax import models, trees
from ftjax.errors import UserError
from ftjax.hub import MODEL_TYPES, load_state_dict, read_config, read_json, read_safetensors, resolve
from ftjax.models import lora

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


def _layer_index_at(fam):
  return getattr(fam, 'layer_index_at', lambda path: None)


def _unstack(fam, flat: dict) -> tuple[dict, dict]:
  """(flat with each stacked parameter split into its layers' paths, {stacked path: its layers' paths})."""
  at, out, groups = _layer_index_at(fam), {}, {}
  for path, value in flat.items():
    k = at(path)
    if k is None:
      out[path] = value
      continue
    groups[path] = [path[:k] + (str(i),) + path[k:] for i in range(value.shape[0])]
    if isinstance(value, jax.ShapeDtypeStruct):
      out.update((p, jax.ShapeDtypeStruct(value.shape[1:], value.dtype)) for p in groups[path])
    else:
      value = np.asarray(jax.device_get(value))
      out.update((p, value[i]) for i, p in enumerate(groups[path]))
  return out, groups


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
    new, whole = {}, _flat(tree)
    flat, groups = _unstack(fam, whole)
    for path, value in flat.items():
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
    for path, layers in groups.items():      # stacked layers (model.scan_layers): back to one parameter
      given = [not isinstance(new[p], jax.ShapeDtypeStruct) for p in layers]
      if any(given) and not all(given):
        raise UserError(f'{source}: the model stacks its layers (model.scan_layers=True), but of '
                        f'{fam.hf_name(layers[0])[0]} and its other layers the checkpoint gives (or init.reinit '
                        f'spares) {sum(given)} of {len(layers)}; load all or none, or set model.scan_layers=False')
      new[path] = np.stack([new.pop(p) for p in layers]) if all(given) else whole[path]
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
    for path, value in _unstack(fam, _flat(tree))[0].items():
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


def check_layer_layout(report: dict, source: str):
  """A UserError when a by-name load (an ftjax checkpoint as init.source: checkpoint.merge_by_name) found the
  model's layers under the other layout: stacked (model.scan_layers=True, `encoder.layer.query...`) on one
  side, one per layer (`encoder.layer.0.query...`) on the other. Nothing of them would load, silently."""
  def key(name):
    return re.sub(r'\.\d+(?=\.)', '', name)
  indexed = lambda name: key(name) != name
  absent = {key(n): indexed(n) for n in report['initialised']}
  hit = next((n for n in report['ignored'] if key(n) in absent and absent[key(n)] != indexed(n)), None)
  if hit is not None:
    model = 'one parameter per layer' if absent[key(hit)] else 'stacked layers (model.scan_layers=True)'
    there = 'stacked layers' if absent[key(hit)] else 'one parameter per layer'
    raise UserError(f'{source} holds {there} ({hit}) but the model has {model}: an ftjax checkpoint loads into '
                    'the same model.scan_layers only. Convert it through transformers: hf.save_pretrained(<a model '
                    'of its layout, loaded from it>, DIR), then init.source=DIR')


def describe(report: dict, source: str, most: int = 12) -> str:
  def names(xs):
    return ', '.join(xs[:most]) + (f', ... ({len(xs) - most} more)' if len(xs) > most else '')
  lines = [f'loaded {len(report["loaded"])} tensors from {source}']
  if report['initialised']:
    lines.append(f'  freshly initialised (absent, or init.reinit): {names(report["initialised"])}')
  if report['ignored']:
    lines.append(f'  ignored (not in the model): {names(report["ignored"])}')
  return '\n'.join(lines)


def _family_of(model, what: str):
  """(family module, transformers model_type) of an ftjax model: the family that defines its class."""
  fam = sys.modules[type(model).__module__]
  model_type = next((t for t, n in MODEL_TYPES.items() if fam.__name__.endswith('.' + n)), None)
  if model_type is None:
    raise UserError(f'{what}: no transformers layout for {type(model).__name__}')
  return fam, model_type


def save_pretrained(model, path: str):
  """Writes config.json + model.safetensors that transformers' classes load (the family's hf_config
  names the architecture). LoRA adapters are merged into their kernels in a copy first; save_adapters
  writes them alone instead."""
  from safetensors.numpy import save_file
  if lora.has_adapters(model):
    model = lora.merge(nnx.clone(model))
  fam, model_type = _family_of(model, 'save_pretrained')
  _, params, rest = nnx.split(model, nnx.Param, ...)
  sd = convert_to_hf(nnx.to_pure_dict(params), nnx.to_pure_dict(rest), model_type=model_type)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(fam.hf_config(model), f, indent=2)
  save_file(sd, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})


# ---- LoRA adapters in PEFT's format ---------------------------------------------------------------
# peft (LoraConfig, save_pretrained) names each adapted torch module by its path in the transformers model,
# under 'base_model.model.', without the adapter's name: '<module>.lora_A.weight' [r, in] and
# '<module>.lora_B.weight' [out, r] are torch Linear weights, ftjax's lora_a [in, r] and lora_b [r, out]
# transposed, for nn.Linear and GPT-2's Conv1D alike (fan_in_fan_out only changes how peft merges).
# modules_to_save are written whole under their transformers names.
ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX = 'adapter_config.json', 'adapter_model.safetensors', 'base_model.model.'


def _hf_names(fam, params: dict) -> dict:
  """{ftjax param path: (transformers name, layout)} with the prefix kept: peft names modules by their path in
  the transformers class hf_config names (GPT2LMHeadModel's 'transformer.h.0...'), which ftjax's paths follow;
  save_pretrained may drop it since transformers' loader accepts both."""
  return {p: fam.hf_name(p) for p in _flat(params)}


def save_adapters(model, path: str, *, modules_to_save=(), base_model_name_or_path: str | None = None):
  """Writes the LoRA adapters alone, as peft's save_pretrained does (adapter_config.json +
  adapter_model.safetensors, no base weights), so that peft.PeftModel.from_pretrained(<the transformers
  model of the base weights>, path) rebuilds this model. `modules_to_save`: transformers module names
  stored whole (peft's option), e.g. ['classifier'] for a head trained with the adapters: without it the
  file holds only the adapters and the head comes from the base checkpoint."""
  from safetensors.numpy import save_file
  fam, model_type = _family_of(model, 'save_adapters')
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat, names = _flat(params), _hf_names(fam, params)
  adapters = {tuple(map(str, p)): m for p, m in nnx.iter_modules(model) if isinstance(m, lora.LoRALinear)}
  if not adapters:
    raise UserError('save_adapters: the model has no LoRA adapters (model.lora.rank > 0 adds them); '
                    'save_pretrained writes the whole model')
  kinds = {(m.lora_a.shape[1], m.scale) for m in adapters.values()}
  if len(kinds) > 1:
    raise UserError(f'save_adapters: the adapters differ in (rank, scale): {sorted(kinds)}; peft\'s format '
                    'as written here takes one rank and alpha')
  (r, scale), = kinds
  tensors, targets, conv1d = {}, [], False
  for p, m in adapters.items():
    name, layout = names[p + ('kernel',)]
    module = name.rsplit('.', 1)[0]
    targets.append(module)
    conv1d |= layout is None      # the kernel kept as torch stores it: a Conv1D [in, out] (GPT-2)
    for ab, w in (('A', m.lora_a), ('B', m.lora_b)):
      tensors[f'{PEFT_PREFIX}{module}.lora_{ab}.weight'] = np.ascontiguousarray(
          np.asarray(jax.device_get(w[...]), np.float32).T)
  for wanted in modules_to_save:
    hits = [p for p, (n, _) in names.items() if n.rsplit('.', 1)[0] == wanted or n.rsplit('.', 1)[0].endswith('.' + wanted)]
    if not hits or any(p[-1].startswith('lora_') for p in hits):
      raise UserError(f'save_adapters: modules_to_save={wanted!r} ' + (
          'is an adapted layer (its adapters are saved already)' if hits else
          f'names no module of the {model_type} model (e.g. {sorted({n.rsplit(".", 1)[0] for n, _ in names.values()})[-3:]})'))
    for p in hits:
      n, layout = names[p]
      tensors[PEFT_PREFIX + n] = np.ascontiguousarray(LAYOUTS[layout][1](np.asarray(jax.device_get(flat[p]), np.float32)))
  # target_modules as people write them ('query', 'c_attn') when those names pick exactly the adapted layers.
  dense = {names[p][0].rsplit('.', 1)[0] for p in flat if p[-1] == 'kernel'}
  short = sorted({t.rsplit('.', 1)[-1] for t in targets})
  picked = {d for d in dense if d.rsplit('.', 1)[-1] in short}
  alpha = scale * r
  config = dict(peft_type='LORA', task_type=None, r=r, lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
                target_modules=short if picked == set(targets) else sorted(targets), lora_dropout=0.0,
                fan_in_fan_out=conv1d, bias='none', use_rslora=False, use_dora=False,
                modules_to_save=list(modules_to_save) or None, init_lora_weights=True, inference_mode=True,
                base_model_name_or_path=base_model_name_or_path, rank_pattern={}, alpha_pattern={})
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, ADAPTER_CONFIG), 'w') as f:
    json.dump(config, f, indent=2)
  save_file(tensors, os.path.join(path, ADAPTER_WEIGHTS), metadata={'format': 'pt'})


def load_adapters(model, path: str):
  """Adds the LoRA adapters of a PEFT adapter directory (save_adapters', or peft's save_pretrained) to
  `model` in place and returns it. The adapters only mean something on the base weights they were trained
  on: load those first (hf.from_pretrained(base_dir, ...)). Layers that already have adapters of the same
  rank get the file's; modules_to_save replace the model's. Everything is checked before the model changes."""
  fam, model_type = _family_of(model, 'load_adapters')
  if any(_layer_index_at(fam)(p) is not None for p in _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))):
    raise UserError('load_adapters: the model stacks its layers (model.scan_layers=True), and LoRA adapters need '
                    'one module per layer: load the base model with model.scan_layers=False')
  d = resolve(path)
  cfg_path, st = os.path.join(d, ADAPTER_CONFIG), os.path.join(d, ADAPTER_WEIGHTS)
  cfg = read_json(cfg_path, 'a peft adapter_config.json (peft_type LORA, r, lora_alpha, target_modules, ...)')
  if cfg.get('peft_type') != 'LORA':
    raise UserError(f'{cfg_path}: peft_type={cfg.get("peft_type")!r}; ftjax loads LoRA adapters (peft_type LORA)')
  unsupported = [f'{k}={cfg[k]!r}' for k in ('use_dora', 'lora_bias', 'rank_pattern', 'alpha_pattern') if cfg.get(k)]
  unsupported += [f'bias={cfg["bias"]!r}'] if cfg.get('bias', 'none') != 'none' else []
  if unsupported:
    raise UserError(f'{cfg_path}: {", ".join(unsupported)} is not supported; ftjax loads plain LoRA (one r and '
                    'lora_alpha, bias "none")')
  r, alpha = cfg.get('r'), cfg.get('lora_alpha')
  if not (isinstance(r, int) and r > 0 and isinstance(alpha, (int, float)) and not isinstance(alpha, bool)):
    raise UserError(f'{cfg_path}: r={r!r} and lora_alpha={alpha!r}; expected a positive integer and a number')
  scale = alpha / math.sqrt(r) if cfg.get('use_rslora') else alpha / r
  if not os.path.exists(st):
    other = [f for f in ('adapter_model.bin',) if os.path.exists(os.path.join(d, f))]
    raise UserError(f'{d}: no {ADAPTER_WEIGHTS}' + (f' ({other[0]} is a pickle, which ftjax does not load: re-save '
                                                   'it with peft\'s save_pretrained(safe_serialization=True))'
                                                   if other else ''))
  sd = read_safetensors(st, f'the {ADAPTER_WEIGHTS} that peft\'s save_pretrained writes')
  outside = [k for k in sd if not k.startswith(PEFT_PREFIX)]
  if outside:
    raise UserError(f'{st}: {outside[:3]} lack peft\'s {PEFT_PREFIX!r} prefix; is it a peft adapter file?')
  sd = {k[len(PEFT_PREFIX):]: v for k, v in sd.items()}
  pairs, whole = {}, {}
  for k, v in sd.items():
    m = re.fullmatch(r'(.+)\.lora_([AB])\.weight', k)
    if m:
      pairs.setdefault(m.group(1), {})[m.group(2)] = np.asarray(v, np.float32)
    else:
      whole[k] = v
  if not pairs:
    raise UserError(f'{st}: no LoRA tensors (<module>.lora_A.weight / lora_B.weight)')

  prefix = fam.HF_PREFIX
  dense = {}     # transformers module name without the base prefix -> (ftjax path, module)
  for p, mod in nnx.iter_modules(model):
    if type(mod) is nnx.Linear or isinstance(mod, lora.LoRALinear):
      p = tuple(map(str, p))
      dense[_strip(fam.hf_name(p + ('kernel',))[0].rsplit('.', 1)[0], prefix)] = ('.'.join(p), mod)
  lacking = sorted(k for k in pairs if _strip(k, prefix) not in dense)
  if lacking:
    raise UserError(f'{st}: adapters for {", ".join(lacking[:3])}' + (' ...' if len(lacking) > 3 else '')
                    + f', a layer the {type(model).__name__} lacks (its dense layers: {", ".join(sorted(dense)[:4])} ...); '
                    'is it an adapter for this architecture?')
  todo, dense_by_path = {}, dict(dense.values())
  for k, ab in pairs.items():
    where, mod = dense[_strip(k, prefix)]
    a, b = ab.get('A'), ab.get('B')
    if a is None or b is None:
      raise UserError(f'{st}: {k} has lora_{"B" if b is None else "A"}.weight but not the other')
    if a.shape != (r, mod.in_features) or b.shape != (mod.out_features, r):
      raise UserError(f'{st}: {k}.lora_A / lora_B have shapes {a.shape} / {b.shape}, but r={r} on this model\'s '
                      f'layer ({mod.in_features} -> {mod.out_features}) needs {(r, mod.in_features)} / '
                      f'{(mod.out_features, r)}: an adapter for another base model or config?')
    if isinstance(mod, lora.LoRALinear) and mod.lora_a.shape[1] != r:
      raise UserError(f'{st}: r={r}, but layer {where} already has rank-{mod.lora_a.shape[1]} adapters')
    todo[where] = (a.T, b.T)
  new_params = None
  if whole:     # modules_to_save: named as in the transformers model, as save_pretrained names them
    state = nnx.state(model, nnx.Param)
    new_params, _, report = convert_from_hf(whole, nnx.to_pure_dict(state), source=st, model_type=model_type)
    if report['ignored']:
      raise UserError(f'{st}: tensors {report["ignored"][:3]} match no parameter of the {type(model).__name__}')

  if new_params is not None:
    nnx.replace_by_pure_dict(state, new_params)
    nnx.update(model, state)
  plain = [w for w in todo if not isinstance(dense_by_path[w], lora.LoRALinear)]
  if plain:       # fresh adapters, overwritten below
    lora.apply(model, rank=r, alpha=scale * r, targets='^(' + '|'.join(map(re.escape, plain)) + ')$', rngs=nnx.Rngs(0))
  for where, mod in nnx.iter_modules(model):
    where = '.'.join(map(str, where))
    if where in todo:
      mod.scale = scale
      mod.lora_a[...], mod.lora_b[...] = (jax.numpy.asarray(x, mod.lora_a[...].dtype) for x in todo[where])
  return model
