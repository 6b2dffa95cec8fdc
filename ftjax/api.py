"""ftjax from Python, for research scripts and notebooks: what `python -m ftjax.main` does, with the
result returned and a UserError raised to the caller instead of an exit; and a finished run loaded back.

  import ftjax
  config = ftjax.get_config('configs/text_finetune.py:smoke')
  config.checkpoint.best_metric = 'eval/accuracy'
  result = ftjax.run(config, 'runs/ft')               # train.Result (an experiment: its report rows)
  run = ftjax.load('runs/ft')                          # the best checkpoint's NNX model, config, tokenizer
  logits = run.predict(['what a lovely day'])          # through the run's own eval preprocessing

Loading reuses what ftjax.evaluate and ftjax.generate restore with (config.json, state.layout,
state.restore_model) and the tokenizer.json the trainer writes into every text run's workdir.
"""
import dataclasses
import functools
import os
from typing import Any

from ftjax.errors import UserError

_distributed = False     # jax.distributed starts once per process, however many runs it makes


def get_config(spec):
  """The ConfigDict of 'configs/<file>.py[:arg]': the file's get_config(arg), as --config calls it."""
  import importlib.util
  path, *arg = os.fspath(spec).split(':', 1)      # as ml_collections' --config flag splits it
  if not os.path.isfile(path):
    raise UserError(f'config {spec!r}: no such file {path!r}')
  try:
    module_spec = importlib.util.spec_from_file_location('ftjax_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(*arg)
  except Exception as e:     # errors raised while loading the config file itself
    raise UserError(f'cannot load config {spec!r}: {type(e).__name__}: {" ".join(str(e).split())}') from None
  if config is None:
    raise UserError(f'config {spec!r}: its get_config() returned None (a missing return?)')
  return config


def run(config, workdir):
  """A training run (-> train.Result) or an experiment (-> its report rows), as ftjax.main runs it;
  `config` is a ConfigDict or 'configs/<file>.py[:arg]'. Rerunning resumes or skips, as the CLI does."""
  global _distributed
  from absl import logging
  from ftjax import cli, experiment, parallel, train
  if isinstance(config, (str, os.PathLike)):
    config = get_config(config)
  if not workdir:
    raise UserError('workdir is required: the directory for checkpoints, metrics and the resolved config')
  workdir = os.fspath(workdir)
  logging.set_verbosity(logging.ERROR)   # library chatter; ftjax prints its own progress
  cli.enable_compilation_cache()
  if 'distributed' in config and not _distributed:
    _distributed = parallel.init_distributed(config.distributed)
  if 'runs' in config:
    return experiment.run(config, workdir)
  return train.train_and_evaluate(config, workdir)


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A run's model in eval mode (dropout off, BatchNorm's running statistics), with what it needs to
  read new inputs: its resolved config and tokenizer (None for image models)."""
  model: Any          # the NNX model; model(*batch[k] for k in config.task.inputs) is its forward pass
  config: Any         # the run's config.json, as a ConfigDict
  tokenizer: Any      # tokenizers.Tokenizer, or None
  step: int           # the checkpoint's training step
  path: str           # the checkpoint folder read (<workdir>/best/<step> or checkpoints/<step>)

  def batch(self, examples) -> dict:
    """The model's inputs for new examples (texts, or dicts of the dataset's fields), made by the run's
    own input.pp_eval, less its label op (new examples have no label): as the model saw evaluation data."""
    import numpy as np
    from ftjax.data import ops
    from ftjax.data.calls import parse_call
    parts = [p.strip() for p in (self.config.input.pp_eval or '').split('|') if p.strip()]
    calls = [parse_call(p) for p in parts]
    fields = ()
    for name, args, kwargs in calls:
      if name == 'tokenize':
        fields = kwargs.get('fields', args[1] if len(args) > 1 else ('text',))
        fields = (fields,) if isinstance(fields, str) else tuple(fields)
    pp = ops.parse('|'.join(p for p, (name, _, _) in zip(parts, calls) if name != 'label'), tok=self.tokenizer)
    rows = []
    for ex in examples:
      if isinstance(ex, str):
        if len(fields) != 1:
          raise UserError(f'the run reads {len(fields)} text fields {fields} per example (input.pp_eval='
                          f'{self.config.input.pp_eval!r}); give each example as a dict of them')
        ex = {fields[0]: ex}
      rows.append(pp(dict(ex), np.random.default_rng(0)))
    if not rows:
      raise UserError('no examples to predict')
    inputs = tuple(self.config.task.inputs)
    missing = [k for k in inputs if k not in rows[0]]
    if missing:
      raise UserError(f'the model reads {missing} (task.inputs) but input.pp_eval={self.config.input.pp_eval!r} '
                      f'makes only {sorted(rows[0])} from these examples')
    return {k: np.stack([r[k] for r in rows]) for k in inputs}

  def predict(self, examples, batch_size: int = 64):
    """The model's float32 logits for new examples ([N, num_labels] for a classifier: argmax(-1) is
    the label). One compiled program: the last chunk is padded to batch_size."""
    import numpy as np
    batch = self.batch(examples)
    n = len(next(iter(batch.values())))
    inputs = tuple(self.config.task.inputs)
    out = []
    for lo in range(0, n, batch_size):
      chunk = {k: v[lo:lo + batch_size] for k, v in batch.items()}
      rows = len(chunk[inputs[0]])
      if n > batch_size and rows < batch_size:    # a full-size chunk: the same program as the others
        chunk = {k: np.concatenate([v, np.repeat(v[:1], batch_size - rows, 0)]) for k, v in chunk.items()}
      out.append(np.asarray(_forward()(self.model, chunk, inputs=inputs))[:rows])
    return np.concatenate(out)


@functools.cache
def _forward():
  """The jitted forward pass, built on first use: importing this module imports no JAX."""
  import jax.numpy as jnp
  from flax import nnx
  from ftjax import tasks

  @functools.partial(nnx.jit, static_argnames='inputs')
  def forward(model, batch, inputs):
    return tasks.call(model, batch, inputs).logits.astype(jnp.float32)
  return forward


def load(workdir, best: bool = True, mesh_shape=None, mesh_axes=None) -> Loaded:
  """A finished (or interrupted) run in `workdir`: the model with its best checkpoint's weights
  (best/<step>, kept when the run set checkpoint.best_metric), or with best=False its latest
  (checkpoints/<step>); laid out as in training on the run's mesh, or on mesh_shape / mesh_axes
  (default axes: data, model, as many as mesh_shape has). A run with optim.ema_eval gives its EMA weights."""
  import jax
  import ml_collections
  from flax import nnx
  from ftjax import checkpoint, hub, parallel
  from ftjax import state as states
  from ftjax.data.tokenizers import load_tokenizer
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise UserError(f'{workdir}: no such directory')
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise UserError(f'{workdir}: no config.json there; is it an ftjax run directory? (an experiment keeps each '
                    'run in a sub-directory)')
  config = ml_collections.ConfigDict(hub.read_json(path, 'the config.json an ftjax run writes'))
  found = {sub: checkpoint.find_step_dir(os.path.join(workdir, sub)) for sub in ('best', 'checkpoints')}
  if not any(found.values()):
    raise UserError(f'{workdir}: no checkpoint there yet (expected best/<step> or checkpoints/<step>); train it '
                    'first with ftjax.run')
  step_dir = found['best' if best else 'checkpoints']
  if step_dir is None and best:
    raise UserError(f'{workdir}: no best checkpoint (best/<step>): the run keeps one only with '
                    'checkpoint.best_metric set; load its latest checkpoint with best=False')
  if step_dir is None:
    raise UserError(f'{workdir}: no latest checkpoint (checkpoints/<step>); load the best one with best=True')
  if mesh_shape:
    mesh = parallel.make_mesh(mesh_shape, mesh_axes or ('data', 'model')[:len(mesh_shape)])
  else:
    mesh = parallel.make_mesh(config.mesh_shape, config.mesh_axes)
  lay = states.layout(config, mesh)
  ema = config.get('optim', {}).get('ema_eval', False)     # what the run's evaluators scored
  state = states.restore_model(step_dir, lay, 'ema' if ema else 'params')
  model = nnx.merge(lay.graphdef_eval, state.params, state.model_state)
  tok_path = os.path.join(workdir, 'tokenizer.json')      # the trainer saves the run's tokenizer there
  tok = load_tokenizer(tok_path) if os.path.exists(tok_path) else None
  return Loaded(model, config, tok, int(jax.device_get(state.step)), step_dir)
