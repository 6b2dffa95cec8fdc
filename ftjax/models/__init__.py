"""Model registry: `config.model.name` is a module under ftjax.models that defines `build(cfg, rngs)`."""
import copy
import re

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx
from ml_collections import FieldReference

from ftjax import registry
from ftjax.errors import UserError

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def dtype(name: str):
  if name not in DTYPES:
    raise UserError(f'model.dtype={name!r}; choose one of {", ".join(DTYPES)}')
  return DTYPES[name]


# model.remat: what each block (BERT layer, ResNet block) keeps for the backward pass; the rest is
# recomputed. Trades compute for activation memory: bigger batches or longer sequences per device.
REMAT = {'': None, 'none': None,
         'full': jax.checkpoint_policies.nothing_saveable,                     # keep only the block input
         'dots': jax.checkpoint_policies.dots_saveable,                        # keep matmul outputs
         'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_policy(name: str):
  if name not in REMAT:
    raise UserError(f'model.remat={name!r}; choose one of {", ".join(repr(k) for k in REMAT)}')
  return REMAT[name]


def remat(fn, name: str):
  """`fn` (a function of modules and arrays) rematerialised under the named policy; '' = as is."""
  policy = remat_policy(name)
  return fn if policy is None else nnx.remat(fn, policy=policy)


def stack(make, n: int, rngs: nnx.Rngs):
  """model.scan_layers: `n` layers `make(rngs)` as ONE module whose variables have a leading [n] axis,
  each slice initialised from its own keys (the rng streams split n ways)."""
  return nnx.split_rngs(splits=n)(nnx.vmap(make, in_axes=(0,), out_axes=0))(rngs)


def stacked_index(stacked: 're.Pattern', path: tuple) -> int | None:
  """Where a layer index goes in `path` when the family's `stacked` pattern (its layer container followed by
  no index, e.g. `encoder.layer.`) matches the dotted name: the parts before the match's end; else None."""
  name = '.'.join(map(str, path))
  m = stacked.search(name)
  return None if m is None else name[:m.end()].count('.')


def scan(fn, layers, carry, xs=None, *, rngs=None, remat_name: str = ''):
  """(carry, ys): `carry, y = fn(layer, carry, x, rngs)` for each slice of `stack`'s `layers` in turn, with
  nnx.scan (one traced layer whatever the depth), `x` the slice of `xs` (None or arrays with a leading
  [n] axis, e.g. a KV cache) and `ys` the y's stacked. Dropout: one key drawn from `rngs` (a new one
  each call) split n ways, so each layer, and each call, has its own; None stays None. model.remat
  applies per layer, inside the scanned body."""
  n = jax.tree.leaves(nnx.state(layers))[0].shape[0]
  keys = None if rngs is None else jax.random.split(rngs.dropout(), n)
  one = remat(lambda layer, carry, x, key: fn(layer, carry, x, None if key is None else nnx.Rngs(dropout=key)),
              remat_name)
  return nnx.scan(one, in_axes=(0, nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))(layers, carry, xs, keys)


def get_module(name: str):
  return registry.load('models', name, 'model.name')


# Keys every family reads; a family's `defaults()` adds its own (ftjax/protocols.py: ModelFamily).
COMMON = dict(
    name='',                # a module under ftjax/models: bert | gpt2 | resnet
    dtype='float32',        # compute dtype (DTYPES); parameters stay float32
    remat='',               # what each block keeps for the backward pass (REMAT); '' = everything
    config='',              # a transformers model directory or config.json giving the architecture; keys set
                            # here override it ('package:<name>': one shipped in a pip package)
    lora=dict(rank=0, alpha=0.0, targets=''),   # rank > 0: adapters on the dense layers matching targets
)


def defaults(name: str) -> dict:
  """Every key `build` reads for model family `name`, with its default (None: from model.config, else
  the family's own default)."""
  return copy.deepcopy({**COMMON, 'name': name, **(get_module(name).defaults() if name else {})})


def resolve(cfg) -> dict:
  """cfg (a ConfigDict or dict) as a plain dict holding every key of its family; a key the family does
  not read is an error naming the known ones."""
  cfg = dict(cfg)
  schema = defaults(cfg.get('name', ''))
  unknown = sorted(set(cfg) - set(schema))
  if unknown:
    raise UserError(f'model.{unknown[0]}: no such key for model.name={schema["name"]!r} (it reads '
                    f'{", ".join(sorted(schema))})')
  out = {k: cfg.get(k, v) for k, v in schema.items()}
  out['lora'] = {**COMMON['lora'], **dict(out['lora'] or {})}
  return {k: v.get() if isinstance(v, FieldReference) else v for k, v in out.items()}


def build(cfg, rngs: nnx.Rngs) -> nnx.Module:
  """Builds the model named by cfg.name from the rest of cfg (a ConfigDict or dict)."""
  kwargs = resolve(cfg)
  if not kwargs['name']:
    raise UserError('model.name is empty; name a module under ftjax/models (bert, gpt2, resnet)')
  lora = kwargs.pop('lora')
  if lora['rank'] and kwargs.get('scan_layers'):
    raise UserError('model.lora.rank > 0 needs model.scan_layers=False (adapters wrap per-layer modules)')
  model = get_module(kwargs.pop('name')).build(kwargs, rngs)
  if lora['rank']:
    from ftjax.models import lora as lora_lib
    lora_lib.apply(model, rank=lora['rank'], alpha=lora['alpha'], targets=lora['targets'], rngs=rngs)
  return model


def initialize(init, shardings=None):
  """Runs `init` under jit straight into `shardings`. It runs once, so on CPU it is compiled without
  backend optimisation: the random-number code otherwise takes seconds to compile, even for tiny models.
  An `init` with a `seed` attribute takes it as its argument, traced: every seed of an experiment runs the
  same compiled (and cached) program."""
  args = () if getattr(init, 'seed', None) is None else (np.int32(init.seed),)
  program = getattr(init, 'program', init)      # state.reseed's inits share their program's compilation
  done = getattr(program, '__dict__', {}).setdefault('compiled', {})
  key = (len(args), jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings)))
  if key not in done:
    done[key] = jax.jit(init, out_shardings=shardings).lower(*args).compile(
        compiler_options={'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None)
  return done[key](*args)


def create(cfg, seed: int = 0) -> nnx.Module:
  """build(cfg, nnx.Rngs(seed)) with every initialiser in one compiled program (`initialize`): built
  eagerly, each op compiles on its own (about 30 s for a small ResNet on CPU). Same values."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(seed))))
  return nnx.merge(graphdef, initialize(lambda: nnx.split(build(cfg, nnx.Rngs(seed)))[1]))


def vocab_size(cfg) -> int | None:
  """The model's vocabulary size, for models that read tokens (None otherwise)."""
  kwargs = resolve(cfg)
  kwargs.pop('lora')
  return get_module(kwargs.pop('name')).vocab_size(kwargs)


def label_classes(config) -> tuple[int, str] | None:
  """(number of classes, the config key that sets it) that a classification run's integer labels must
  lie under; None when the task or the model has no class head."""
  if config.task.name != 'classification':
    return None
  m = config.model
  if m.get('num_classes'):
    n, key = m.num_classes, 'model.num_classes'
  elif m.get('head') == 'classification':
    n, key = m.get('num_labels', 2), 'model.num_labels'     # BERT's default
  else:
    return None
  return (n, key) if n > 1 else None      # num_labels=1: regression
