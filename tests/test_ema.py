"""EMA of the parameters (optim.ema_decay): its closed form, bit-identical resume, evaluators and
init.source on the EMA weights, sharding like the parameters, and bad values failing in one line.

The expected values are computed here from what the runs record (raw parameters per step, Orbax
checkpoints read back without ftjax), not with the code under test.
"""
import functools
import importlib.util
import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from conftest import ROOT, digits_batch, run_cli, tiny_setup
from ftjax import defaults, optim, parallel, train, trees
from ftjax import state as states

DECAY = 0.9
STEPS = 20     # the smoke config: checkpoints at 10 and 20; evaluations only at the end (the cheapest run)
OVERRIDES = dict(total_steps=STEPS, mesh_shape=(1,), **{'evals.eval.every': 0, 'evals.test.split': 'test[:64]',
                                                        'checkpoint.best_metric': '', 'optim.ema_decay': DECAY,
                                                        'optim.ema_eval': True})
ARGS = ['--config=configs/resnet_digits.py:smoke'] + [f'--config.{k}={v}' for k, v in OVERRIDES.items()]


@functools.lru_cache(maxsize=None)
def saved(step_dir):
  """(raw params, {name: EMA}) of an ftjax checkpoint, read with Orbax alone: the EMA leaves are the
  optimizer-state leaves under an `ema_params` node, named like the parameters below it."""
  tree = ocp.StandardCheckpointer().restore(os.path.join(step_dir, 'state'))
  ema = {n.split('ema_params.', 1)[1]: v for n, v in trees.flat(tree['opt_state']).items() if 'ema_params.' in n}
  return trees.flat(tree['params']), ema


def smoke_config(**optim_kw):
  spec = importlib.util.spec_from_file_location('resnet_digits', os.path.join(ROOT, 'configs/resnet_digits.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config('smoke')
  for k, v in {**OVERRIDES, **{f'optim.{k}': v for k, v in optim_kw.items()}}.items():
    *parents, key = k.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[key] = v
  return c


def test_ema_is_its_closed_form_passes_updates_through_and_skips_frozen_parameters():
  """ema_k = d^k p_0 + sum_i (1 - d) d^(k - i) p_i over the raw parameters p_i after each SGD step; the
  updates are those without EMA; frozen parameters keep no EMA array."""
  d, k = 0.5, 3
  batches = [digits_batch(16, seed=i) for i in range(k)]

  def trajectory(ema_decay):
    setup = tiny_setup(optim_overrides=dict(ema_decay=ema_decay, freeze='stem'))
    trajectory.tx = setup['tx']
    state = states.initialize(setup['init'], None)
    step = jax.jit(setup['step'])
    ps = [jax.device_get(state.params)]
    for b in batches:
      state, _ = step(state, b)
      ps.append(jax.device_get(state.params))
    return state, ps

  state, ps = trajectory(d)
  got = trees.flat(jax.device_get(optim.ema_params(state.params, state.opt_state)))
  flat = [trees.flat(p) for p in ps]
  want = {n: d ** k * flat[0][n].astype(np.float64) + sum((1 - d) * d ** (k - i) * flat[i][n].astype(np.float64)
                                                          for i in range(1, k + 1)) for n in got}
  off_by_one = {n: d ** k * flat[0][n] + sum((1 - d) * d ** (k - i) * flat[i - 1][n] for i in range(1, k + 1))
                for n in got}
  for n in got:
    np.testing.assert_allclose(got[n], want[n], rtol=1e-6, atol=1e-7, err_msg=n)
  assert max(float(np.abs(got[n] - off_by_one[n]).max()) for n in got) > 1e-3    # the test tells them apart
  assert max(float(np.abs(got[n] - flat[k][n]).max()) for n in got) > 1e-3       # not the raw parameters

  frozen = [n for n in flat[0] if n.startswith('stem')]
  assert frozen and set(optim.ema_of(state.opt_state)) == set(flat[0]) - set(frozen)
  for n in frozen:
    np.testing.assert_array_equal(got[n], flat[0][n])

  # The EMA only watches: its optimizer's updates are those of the one without it, bit for bit (op by op;
  # inside one jitted step XLA may fuse the gradient reductions differently, by an ulp).
  plain = tiny_setup(optim_overrides=dict(freeze='stem'))['tx']
  assert not optim.ema_of(jax.eval_shape(plain.init, ps[0]))
  updates = lambda tx: jax.jit(lambda p, g: tx.update(g, tx.init(p), p)[0])(ps[0], ps[k])   # any gradients
  for a, b in zip(jax.tree.leaves(updates(trajectory.tx)), jax.tree.leaves(updates(plain))):
    np.testing.assert_array_equal(a, b)


def test_ema_is_sharded_like_the_parameters():
  cfg = defaults.base_config('resnet')
  cfg.model.update(depth=18, stages=(1, 1, 1, 1), width=0.125, stem='small', in_channels=1, num_classes=10)
  cfg.optim.ema_decay = DECAY
  tx, _ = optim.build(cfg.optim, cfg.schedule, 10)
  mesh = parallel.make_mesh((-1,), ('fsdp',))
  lay = states.layout(cfg, mesh, tx)
  params = trees.flat(lay.shardings.params)
  ema = optim.ema_of(lay.shardings.opt_state)
  assert set(ema) == set(params)
  for n, s in ema.items():
    assert s == params[n], n
  assert any(s.spec != jax.sharding.PartitionSpec() for s in ema.values())    # else the check says nothing


@pytest.fixture(scope='module')
def runs(tmp_path_factory, digits_ready):
  """One uninterrupted smoke run with an EMA, and the same run stopped after its checkpoint at step 10
  (its step-20 checkpoint removed, as a kill before that save would leave it) and resumed to the end,
  evaluating the raw parameters this time (optim.ema_eval changes no training step)."""
  full, cut = str(tmp_path_factory.mktemp('full')), str(tmp_path_factory.mktemp('cut'))
  r = run_cli(*ARGS, f'--workdir={full}')
  assert r.returncode == 0, r.stderr[-3000:]
  shutil.rmtree(cut)
  shutil.copytree(full, cut)
  shutil.rmtree(os.path.join(cut, 'checkpoints', str(STEPS)))
  again = run_cli(*[a for a in ARGS if 'ema_eval' not in a], f'--workdir={cut}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'resumed from {cut}/checkpoints/10' in again.stdout, again.stdout[-3000:]
  return full, cut


def test_resume_gives_the_same_ema_bit_for_bit(runs):
  (p_full, e_full), (p_cut, e_cut) = (saved(os.path.join(w, 'checkpoints', str(STEPS))) for w in runs)
  assert set(e_full) == set(p_full) and set(e_cut) == set(p_cut)      # an EMA of every parameter
  for n in p_full:
    np.testing.assert_array_equal(e_full[n], e_cut[n], err_msg=n)
    np.testing.assert_array_equal(p_full[n], p_cut[n], err_msg=n)
  assert max(float(np.abs(e_full[n] - p_full[n]).max()) for n in p_full) > 1e-3


def logged(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if 'eval/loss' in r and r['step'] == STEPS][-1]


def test_evaluators_score_the_ema_and_init_source_loads_it(runs, tmp_path):
  from ftjax.evaluate import evaluate
  full, cut = runs
  on_ema, on_raw = logged(full), logged(cut)     # the trainer's evaluations with and without optim.ema_eval
  assert abs(on_raw['eval/loss'] - on_ema['eval/loss']) > 1e-4, (on_raw, on_ema)
  # With optim.ema_eval the evaluators score the EMA weights: those ftjax.evaluate reads (with the same
  # setting) from the checkpoint's optimizer state.
  raw, ema = saved(os.path.join(full, 'checkpoints', str(STEPS)))
  got = evaluate(smoke_config(), full, only='eval')
  for n, v in trees.flat(jax.device_get(got.state.params)).items():
    np.testing.assert_array_equal(v, ema[n], err_msg=n)
  assert got.metrics['eval/accuracy'] == on_ema['eval/accuracy']
  np.testing.assert_allclose(got.metrics['eval/loss'], on_ema['eval/loss'], rtol=1e-6)
  assert max(float(np.abs(ema[n] - raw[n]).max()) for n in raw) > 1e-3
  # So does ftjax.load, for scripts (the run without optim.ema_eval: its raw parameters).
  import ftjax
  for workdir, want in ((full, ema), (cut, saved(os.path.join(cut, 'checkpoints', str(STEPS)))[0])):
    loaded = nnx.state(ftjax.load(workdir, best=False).model, nnx.Param)
    for n, v in trees.flat(jax.device_get(nnx.to_pure_dict(loaded))).items():
      np.testing.assert_array_equal(v, want[n], err_msg=n)

  # A later run from this one with init.weights=ema starts from these weights (the default, the raw
  # parameters, is init.source's behaviour from before EMA, tested in test_configs.py), and so does its
  # own EMA, not at the random weights the loaded ones replace.
  later = defaults.complete(smoke_config())
  later.init.update(source=full, weights='ema')
  built = train.build_step(later, parallel.make_mesh((1,), ('data',)), STEPS)
  state = jax.device_get(states.load_pretrained(built.layout, later.init, later.model))
  again = optim.ema_of(state.opt_state)
  assert set(again) == set(ema)
  for n, v in trees.flat(state.params).items():
    np.testing.assert_array_equal(v, ema[n], err_msg=n)
    np.testing.assert_array_equal(again[n], ema[n], err_msg=n)


@pytest.mark.parametrize('arg, key', [('--config.optim.ema_decay=1.5', 'optim.ema_decay=1.5'),
                                      ('--config.optim.ema_decay=-0.1', 'optim.ema_decay=-0.1'),
                                      ('--config.optim.ema_eval=True', 'optim.ema_eval'),
                                      ('--config.init.weights=average', "init.weights='average'")])
def test_bad_ema_settings_fail_in_one_line_before_anything_is_written(arg, key, tmp_path):
  wd = tmp_path / 'run'
  r = run_cli('--config=configs/resnet_digits.py:smoke', arg, f'--workdir={wd}')
  assert r.returncode == 2, r.stderr[-3000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'ftjax: error: {key}'), lines
  assert not wd.exists()
