"""The train state, and the one place it is set up, for training, ftjax.evaluate, ftjax.aot and ftjax.bench.

`layout(config, mesh, tx)` describes the state before any array exists: its init function, shapes, and
shardings from config.sharding_rules (parameters, model state and optimizer state split over the mesh
as the rules say). `start(config, layout, ...)` then makes the state, directly in those shardings: the
newest checkpoint that restores (training: with its optimizer state), the parameters of a checkpoint
without its optimizer state (evaluation), config.init.source loaded over a fresh init, or the fresh init
itself. No copy of the whole model ever sits on one device, so a model that only fits sharded trains
and evaluates.

State is functional: the NNX model is split once into a graph definition and pure-dict parameters /
model state (BatchNorm statistics), which ride in TrainState with the optimizer state, the step and
the RNG.
"""
import dataclasses
import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import nnx

from ftjax import checkpoint, hf, hub, models, optim, parallel, trees
from ftjax.errors import UserError
from ftjax.models import initialize   # the compile-once runner the state's set-up uses


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any          # pure dict of nnx.Param values
  model_state: Any     # pure dict of every other variable (BatchNorm statistics, ...)
  opt_state: Any
  rng: jax.Array       # raw uint32 key; step s uses fold_in(rng, s)


def graphdefs(model_cfg):
  """(train-mode graphdef, eval-mode graphdef): the mode is static structure, not state."""
  return _modes(nnx.eval_shape(lambda: models.build(model_cfg, nnx.Rngs(0))))


def _modes(model):
  model.train()
  g_train = nnx.split(model, nnx.Param, ...)[0]
  model.eval()
  g_eval = nnx.split(model, nnx.Param, ...)[0]
  model.train()
  return g_train, g_eval


def make_init(model_cfg, tx, seed: int):
  """The fresh state's function; `initialize` passes it its seed as a traced argument (one program for
  every seed), a plain call uses `seed`. Once it has run or been traced, `init.graphdefs` holds
  graphdefs(model_cfg), from the model it built (building a model is a large share of a small run's set-up)."""
  def init(seed=seed):
    key = jax.random.PRNGKey(seed)
    model = models.build(model_cfg, nnx.Rngs(jax.random.fold_in(key, 0)))
    if init.graphdefs is None:
      init.graphdefs = _modes(model)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=rest,
                      opt_state=tx.init(params), rng=jax.random.fold_in(key, 1))
  init.seed, init.graphdefs = seed, None
  return init


def load_pretrained(lay: 'Layout', cfg_init, model_cfg) -> TrainState:
  """The fresh state with the parameters (and BatchNorm statistics) of cfg_init.source, by name; names
  matching cfg_init.reinit keep their fresh values (head surgery). The fresh init computes only what the
  source does not give: the loaded leaves leave its program, so XLA drops their random numbers (a
  MiniLM's random init, which its weights then overwrite, took ~10 s to compile on 2 CPU cores). The
  values kept are those of the whole init, since each draws its key by name and count (nnx.Rngs)."""
  src, weights = cfg_init.source, cfg_init.get('weights', 'params')
  params, model_state = lay.abstract.params, lay.abstract.model_state     # shapes only: nothing computed yet
  if hub.is_hf_dir(src):
    if weights == 'ema':
      raise UserError(f'init.weights=ema: init.source={src!r} is a transformers directory, which keeps no EMA; '
                      'use init.weights=params')
    model_type = hub.read_config(src, expect=model_cfg.name)['model_type']
    new, new_state, report = hf.convert_from_hf(hub.load_state_dict(src), params, model_state, source=src,
                                                model_type=model_type, reinit=cfg_init.reinit)
    where = src
  else:
    src_params, src_state, where = checkpoint.read_params(src, optim.ema_params if weights == 'ema' else None)
    where += ' (EMA weights)' if weights == 'ema' else ''
    new, report = checkpoint.merge_by_name(params, src_params, cfg_init.reinit, where)
    new_state, _ = checkpoint.merge_by_name(model_state, src_state, cfg_init.reinit, where)
    hf.check_layer_layout(report, where)     # stacked layers (model.scan_layers) on one side only: nothing would load
  print(hf.describe(report, where), flush=True)
  fresh = lambda x: isinstance(x, jax.ShapeDtypeStruct)      # the source did not give it

  def init(seed):
    state = lay.init(seed)
    drop = lambda n, f: f if fresh(n) else jnp.zeros(f.shape, f.dtype)
    return state.replace(params=jax.tree.map(drop, new, state.params),
                         model_state=jax.tree.map(drop, new_state, state.model_state))
  init.seed = lay.init.seed

  state = initialize(init, lay.shardings)
  fill = lambda n, f: jax.tree.map(lambda a, b: b if fresh(a) else a, n, jax.device_get(f))
  params = fill(new, state.params)
  return state.replace(params=jax.device_put(params, lay.shardings.params),
                       model_state=jax.device_put(fill(new_state, state.model_state), lay.shardings.model_state),
                       opt_state=optim.ema_restart(state.opt_state, params))   # the EMA starts at the loaded weights


@dataclasses.dataclass(frozen=True)
class Layout:
  """A state before any array exists: how to make it, its shapes, where each piece lives, and the
  model's graph definitions (train and eval mode) that turn its parameters back into a model."""
  init: Callable[[], TrainState]   # the fresh state, from config.seed (run it under jit: `initialize`)
  abstract: TrainState             # jax.ShapeDtypeStruct leaves
  shardings: TrainState            # NamedSharding leaves, by config.sharding_rules
  graphdef_train: Any
  graphdef_eval: Any

  def targets(self) -> TrainState:
    """The abstract state with its shardings: what a sharded restore reads into."""
    return checkpoint.abstract(self.abstract, self.shardings)


def reseed(lay: Layout, seed: int) -> Layout:
  """`lay` for a run with another seed: the same init program (`initialize` compiles it once), which takes
  the seed as its argument."""
  if lay.init.seed == seed:
    return lay
  program = getattr(lay.init, 'program', lay.init)

  def init(seed=seed):
    return program(seed)
  init.seed, init.graphdefs, init.program = seed, program.graphdefs, program
  return dataclasses.replace(lay, init=init)


def layout(config, mesh, tx=None) -> Layout:
  """The state of config.model on `mesh`, with the optimizer `tx`'s state (none when tx is None: an
  evaluation), laid out by the family's logical axes and config.sharding_rules."""
  logical_axes = models.get_module(config.model.name).logical_axes
  init = make_init(config.model, tx or optax.identity(), config.seed)
  abstract = jax.eval_shape(init)
  shardings = parallel.state_shardings(abstract, mesh, config.sharding_rules, logical_axes)
  return Layout(init, abstract, shardings, *init.graphdefs)


def start(config, lay: Layout, ckpt: checkpoint.Checkpointer | None = None, set_data_state=None,
          step_dir: str | None = None) -> tuple[TrainState, str]:
  """The state a run or an evaluation starts from, straight into lay.shardings, and where it came from:
  - `ckpt` (training): the newest of its checkpoints that restores, optimizer state included; the data
    state goes to `set_data_state`; damaged checkpoints are skipped (checkpoint.Checkpointer.restore);
  - `step_dir` (evaluation): that checkpoint's model, without its optimizer state (`restore_model`); with
    optim.ema_eval its EMA weights, the ones the run's evaluators scored;
  - else config.init.source over a fresh init (`load_pretrained`), else the fresh init."""
  if ckpt is not None:
    state, step = ckpt.restore(lay.targets(), set_data_state)
    return state, os.path.join(ckpt.workdir, 'checkpoints', str(step))
  if step_dir is not None:
    ema = config.get('optim', {}).get('ema_eval', False)     # .get: the config.json of a run from before EMA
    return restore_model(step_dir, lay, 'ema' if ema else 'params'), step_dir + (' (EMA weights)' if ema else '')
  if config.init.source:
    return load_pretrained(lay, config.init, config.model), config.init.source
  return initialize(lay.init, lay.shardings), 'random initialisation'


def restore_model(step_dir: str, lay: Layout, weights: str = 'params') -> TrainState:
  """The step, parameters, model state and RNG saved in the checkpoint folder `step_dir`, read straight
  into lay.shardings. An Orbax partial restore: the optimizer state stays on disk (`lay` has none when
  built without an optimizer; else it starts fresh). As with init.source, a name the model has and the
  checkpoint lacks keeps its fresh value; one saved with another shape is an error. weights='ema': the
  parameters' EMA in their place, read (sharded too) from the saved optimizer state, the rest of which
  is skipped."""
  path = os.path.join(step_dir, 'state')
  target = lay.targets()
  item = {'step': target.step, 'params': target.params, 'model_state': target.model_state, 'rng': target.rng}
  tree = checkpoint_tree(path)
  saved = trees.flat({k: tree.get(k) for k in item})
  for key, want in trees.flat(item).items():
    if key in saved and tuple(saved[key].shape) != tuple(want.shape):
      raise UserError(f'{step_dir}: {key} has shape {tuple(saved[key].shape)} there but {tuple(want.shape)} in '
                      'the model; evaluate it with the model config it was trained with')
  if weights == 'ema':
    if not optim.ema_of(tree.get('opt_state')):
      raise UserError(checkpoint.no_ema('optim.ema_eval=True', step_dir))
    into = trees.flat(target.params)
    pick = lambda p, _: into.get(optim.ema_name(trees.dotted(p)), ocp.PLACEHOLDER)   # PLACEHOLDER: not read
    item['opt_state'] = jax.tree_util.tree_map_with_path(pick, tree['opt_state'])
  restored = ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item), partial_restore=True))
  if weights == 'ema':
    restored['params'] = optim.ema_params(restored['params'], restored.pop('opt_state'))
  state = TrainState(opt_state=lay.abstract.opt_state, **restored)
  lacking = lambda x: isinstance(x, jax.ShapeDtypeStruct)    # not in the checkpoint, or an optimizer's state
  if any(lacking(x) for x in jax.tree.leaves(state)):
    fresh = initialize(lay.init, lay.shardings)
    state = jax.tree.map(lambda r, f: f if lacking(r) else r, state, fresh)
  return state


def checkpoint_tree(path: str) -> dict:
  """The saved tree of an Orbax PyTree item folder, with each array's metadata (shape, dtype) as its
  leaves; reads no array."""
  meta = ocp.PyTreeCheckpointer().metadata(path)
  return getattr(meta, 'item_metadata', meta).tree
