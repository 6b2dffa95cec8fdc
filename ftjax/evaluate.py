"""Runs a config's evaluators on a saved model, without training:

  python -m ftjax.evaluate --config=configs/X.py --workdir=DIR [--only=probe,knn] [--config.evals...]

The model is the latest checkpoint in DIR; with none there, config.init.source (pretrained weights),
else a random initialisation (the baseline a probe should beat). Results are printed and written to
DIR/evaluate.json as {"step", "source", "metrics"}.
"""
import json
import os

import jax
import jax.numpy as jnp
from ftjax.errors import UserError


def evaluate(config, workdir: str, only: str = '') -> dict:
  import optax
  from ftjax import checkpoint, parallel, tasks, train
  mesh = parallel.make_mesh(config.mesh_shape, config.mesh_axes)
  names = [n for n in only.split(',') if n] or list(config.evals)
  missing = sorted(set(names) - set(config.evals))
  if missing:
    raise UserError(f'--only: no evaluator {missing} in the config (it has {sorted(config.evals)})')
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for n in list(config.evals):
      if n not in names:
        del config.evals[n]
  task = tasks.build(config.task)
  _, g_eval = train.graphdefs(config.model)
  # No optimizer: only parameters and model state are evaluated.
  fresh = train.initialize(train.make_init(config.model, optax.identity(), config.seed), None)
  latest = checkpoint.find_step_dir(os.path.join(workdir, 'checkpoints'))
  if latest:
    params, model_state, where = checkpoint.read_params(latest)
    state = fresh.replace(step=jnp.asarray(int(os.path.basename(where))),
                          params=checkpoint.merge_by_name(fresh.params, params, '', where)[0],
                          model_state=checkpoint.merge_by_name(fresh.model_state, model_state, '', where)[0])
  elif config.init.source:
    where = config.init.source
    state = train.load_pretrained(fresh, config.init, config.model, jax.tree.map(lambda _: None, fresh))
  else:
    where = 'random initialisation'
    state = fresh
  print(f'evaluating {where}', flush=True)
  sharding = jax.tree.map(lambda _: parallel.replicated(mesh), state)
  state = jax.device_put(state, sharding)
  metrics = {}
  for name, ev in train.build_evaluators(config, g_eval, task, mesh, sharding).items():
    res = ev(state)
    print(f'  {name}: ' + ', '.join(f'{k} {v:.4f}' for k, v in res.items()), flush=True)
    metrics.update(res)
  out = {'step': int(state.step), 'source': where, 'metrics': metrics}
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'evaluate.json'), 'w') as f:
      json.dump(out, f, indent=2)
  return out


def _cli():
  from absl import app, flags, logging
  from ftjax import main as cli     # its --config and --workdir flags, parsing and error format
  flags.DEFINE_string('only', '', 'comma-separated evaluator names to run (default: all in the config)')

  def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    cli._enable_compilation_cache()
    try:
      evaluate(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.only)
    except UserError as e:
      cli._fail(str(e))
  app.run(main, flags_parser=cli._parse)


if __name__ == '__main__':
  _cli()
