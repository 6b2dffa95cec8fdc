"""ftjax.evaluate lays the model out as training does: under FSDP on 8 devices each one holds an eighth
of the parameters, read straight from the checkpoint, and the metrics are those of one device."""
import json
import os
import subprocess
import sys

import jax
import numpy as np

from conftest import ROOT, main_env

OVERRIDES = ['--config.total_steps=3', '--config.evals.eval.every=0', '--config.checkpoint.best_metric=']
FSDP = "--config.mesh_axes=('fsdp',)"


def tiny_config(tmp_path) -> str:
  """The digits smoke config with one block per stage (fast to compile). Every conv and BatchNorm width
  (8 ... 64) divides by 8, so FSDP splits them all: only the head's 10 biases stay whole."""
  path = tmp_path / 'tiny.py'
  path.write_text(
      'import importlib.util\n'
      f'spec = importlib.util.spec_from_file_location("d", {os.path.join(ROOT, "configs", "resnet_digits.py")!r})\n'
      'base = importlib.util.module_from_spec(spec); spec.loader.exec_module(base)\n'
      'def get_config(arg=None):\n'
      '  c = base.get_config("smoke")\n'
      '  c.model.stages = (1, 1, 1, 1)\n'
      '  return c\n')
  return f'--config={path}'


def run_evaluate(*args, devices=1, timeout=300):
  """`python -m ftjax.evaluate ARGS` in a subprocess with `devices` simulated devices."""
  return subprocess.run([sys.executable, '-m', 'ftjax.evaluate', *args], cwd=ROOT, env=main_env(devices),
                        capture_output=True, text=True, timeout=timeout)


def parse(argv):
  """The config a command line gives, parsed as every entry point parses it."""
  from absl import flags
  from ftjax import cli
  fv = flags.FlagValues()
  cli.define(fv, argv)
  cli.parse(argv, fv)
  return fv.config


def test_fsdp_evaluation_holds_an_eighth_of_the_parameters_and_matches_one_device(tmp_path, digits_ready):
  from ftjax import evaluate, train
  wd, args = str(tmp_path / 'w'), [tiny_config(tmp_path), *OVERRIDES]
  # Trained data-parallel on this process's 8 devices: the checkpoint is saved replicated.
  result = train.train_and_evaluate(parse(['ftjax.main', *args, f'--workdir={wd}']), wd)
  assert (result.step, result.total_steps, result.stopped_by) == (3, 3, None)
  trained = {k: v for k, v in result.metrics.items() if k.startswith('test/')}
  assert trained and trained == {k: v for row in map(json.loads, open(os.path.join(wd, 'metrics.jsonl')))
                                 if row['step'] == 3 for k, v in row.items() if k.startswith('test/')}

  r = run_evaluate(*args, f'--workdir={wd}', devices=1)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f'evaluating {wd}/checkpoints/3' in r.stdout
  one = json.load(open(os.path.join(wd, 'evaluate.json')))

  ev = evaluate.evaluate(parse(['ftjax.evaluate', *args, FSDP, f'--workdir={wd}']), wd)
  assert dict(ev.state.params['head']['kernel'].sharding.mesh.shape) == {'fsdp': 8}
  assert not jax.tree.leaves(ev.state.opt_state)           # no optimizer state built or read
  # What each device really holds, from the arrays' shards.
  leaves = jax.tree.leaves(ev.state.params)
  whole = sum(x.nbytes for x in leaves)
  held = {d: 0 for d in jax.devices()}
  for x in leaves:
    for shard in x.addressable_shards:
      held[shard.device] += shard.data.nbytes
  assert len(held) == 8 and max(held.values()) <= whole / 7, (held, whole)

  assert ev.step == one['step'] == 3 and ev.source == one['source'] == f'{wd}/checkpoints/3'
  assert set(ev.metrics) == set(one['metrics']) >= set(trained)
  for k, v in one['metrics'].items():
    np.testing.assert_allclose(ev.metrics[k], v, rtol=1e-5, err_msg=k)
  for k, v in trained.items():
    np.testing.assert_allclose(ev.metrics[k], v, rtol=1e-5, err_msg=k)
  assert ev.metrics['test/accuracy'] == one['metrics']['test/accuracy']
  assert json.load(open(os.path.join(wd, 'evaluate.json')))['metrics'] == ev.metrics
