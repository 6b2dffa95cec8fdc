"""Runs a config's evaluators on a saved model, without training:

  python -m ftjax.evaluate --config=configs/X.py --workdir=DIR [--only=probe,knn] [--config.evals...]

The model is the latest checkpoint in DIR; with none there, config.init.source (pretrained weights),
else a random initialisation (the baseline a probe should beat). Results are printed and written to
DIR/evaluate.json as {"step", "source", "metrics"}. The model is laid out as in training, by
config.sharding_rules on config.mesh_axes, and a checkpoint is read straight into that layout without
its optimizer state (ftjax/state.py): a model that only fits sharded is evaluated sharded.
"""
import dataclasses
import json
import os
from typing import Any

import jax

from ftjax import cli
from ftjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Evaluation:
  step: int
  source: str      # the checkpoint folder, init.source, or 'random initialisation'
  metrics: dict
  state: Any       # the evaluated state.TrainState, laid out on the mesh (no optimizer state)


def evaluate(config, workdir: str, only: str = '') -> Evaluation:
  from ftjax import checkpoint, defaults, parallel, tasks, train
  from ftjax import state as states
  mesh = parallel.make_mesh(config.mesh_shape, config.mesh_axes)
  names = [n for n in only.split(',') if n] or list(config.evals)
  missing = sorted(set(names) - set(config.evals))
  if missing:
    raise UserError(f'--only: no evaluator {missing} in the config (it has {sorted(config.evals)})')
  config = defaults.complete(config)       # a copy, with every key the family and evaluators read
  with config.unlocked():
    for n in list(config.evals):
      if n not in names:
        del config.evals[n]
  task = tasks.build(config.task)
  layout = states.layout(config, mesh)      # no optimizer: only parameters and model state are evaluated
  latest = checkpoint.find_step_dir(os.path.join(workdir, 'checkpoints'))
  state, where = states.start(config, layout, step_dir=latest)
  print(f'evaluating {where}', flush=True)
  metrics = {}
  steps = train.eval_steps(layout.graphdef_eval, task, mesh, layout.shardings)
  for name, ev in train.build_evaluators(config, mesh, *steps).items():
    res = ev(state)
    print(f'  {name}: ' + ', '.join(f'{k} {v:.4f}' for k, v in res.items()), flush=True)
    metrics.update(res)
  out = Evaluation(int(jax.device_get(state.step)), where, metrics, state)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'evaluate.json'), 'w') as f:
      json.dump({'step': out.step, 'source': out.source, 'metrics': out.metrics}, f, indent=2)
  return out


def _main():
  cli.tune_malloc()
  from absl import app, flags, logging
  cli.define()
  flags.DEFINE_string('only', '', 'comma-separated evaluator names to run (default: all in the config)')

  def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    cli.enable_compilation_cache()
    try:
      evaluate(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.only)
    except UserError as e:
      cli.fail(str(e))
  app.run(main, flags_parser=cli.parse)


if __name__ == '__main__':
  _main()
