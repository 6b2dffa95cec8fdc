"""Parameter sharding from one rules table: data parallel, FSDP, tensor parallel and FSDP + TP on 8
simulated devices give the single-device train step (BERT, GPT-2 causal LM, ResNet); FSDP holds ~1/8 of
the state per device."""
import functools

import jax
import numpy as np
import pytest

from conftest import digits_batch
from ftjax import defaults, models, optim, parallel, tasks, train
from ftjax import state as states

# One layer: every rule applies to each layer alike, and the 8-device programs compile in half the time.
BERT = dict(name='bert', vocab_size=96, hidden_size=64, num_hidden_layers=1, num_attention_heads=8,
            intermediate_size=128, max_position_embeddings=16, hidden_act='gelu_new', initializer_range=0.2,
            head='classification', num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            lora=dict(rank=4, alpha=4.0, targets=r'attention\.self\.value$'))
# Causal LM on packed, padded rows (attention_mask and segment_ids); the LM head is tied to wte. LoRA on
# attn.c_proj: on the fused c_attn its B factor (3 * n_embd wide, split only by `model`) would be replicated
# under FSDP, too large a share of so small a model for the 1/8 bound below.
GPT2 = dict(name='gpt2', vocab_size=96, n_embd=64, n_layer=1, n_head=8, n_inner=128, n_positions=16,
            activation_function='gelu_new', initializer_range=0.2, head='lm', resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, lora=dict(rank=4, alpha=4.0, targets=r'attn\.c_proj$'))
# Two stages (8 and 16 channels: both split 8 ways): a plain block and a strided one with its projection.
RESNET = dict(name='resnet', depth=18, stages=(1, 1), width=0.125, stem='small', in_channels=1,
              num_classes=10)
MESHES = {'dp': ((8,), ('data',)), 'fsdp': ((8,), ('fsdp',)), 'tp': ((2, 4), ('data', 'model')),
          'fsdp_tp': ((2, 4), ('fsdp', 'model'))}


def _text_batch(b=16, t=12):
  rng = np.random.default_rng(0)
  mask = (np.arange(t)[None] < rng.integers(4, t + 1, (b, 1))).astype(np.int32)
  return {'input_ids': rng.integers(1, 96, (b, t)).astype(np.int32) * mask, 'attention_mask': mask,
          'token_type_ids': np.zeros((b, t), np.int32), 'label': rng.integers(0, 3, b).astype(np.int32)}


def _lm_batch(b=16, t=12):
  """Rows of two documents (segment_ids 1, 2; the second may be empty) then padding (mask 0, segment 0)."""
  rng = np.random.default_rng(0)
  pos = np.arange(t)[None]
  mask = (pos < rng.integers(4, t + 1, (b, 1))).astype(np.int32)
  segment_ids = ((pos >= rng.integers(2, t, (b, 1))).astype(np.int32) + 1) * mask
  return {'input_ids': rng.integers(1, 96, (b, t)).astype(np.int32) * mask, 'attention_mask': mask,
          'segment_ids': segment_ids}


def _setup(model):
  cfg = defaults.base_config()
  cfg.model.update(model)
  # eps well above rounding noise: some gradients are exactly zero in theory (attention key biases)
  # and Adam with a tiny eps turns their noise, which depends on the reduction order, into full steps.
  cfg.optim.update(name='adamw', lr=1e-2, weight_decay=0.01, eps=1e-3)
  cfg.schedule.name = 'constant'
  if model['name'] == 'bert':
    cfg.task.inputs = ('input_ids', 'attention_mask', 'token_type_ids')
  if model['name'] == 'gpt2':
    cfg.task.name = 'causal_lm'               # reads input_ids, attention_mask, segment_ids from the batch
  tx, sched = optim.build(cfg.optim, cfg.schedule, 10)
  g_train, _ = states.graphdefs(cfg.model)
  init = states.make_init(cfg.model, tx, 0)
  return cfg, init, train.make_train_step(g_train, tasks.build(cfg.task), tx, sched)


def _run(cfg, init, step, batch, mesh, fresh=None):
  """Two steps on `mesh`, from `fresh` (a host copy of the initial state) copied into the mesh's layout,
  or, without it, from the state initialised straight into that layout (as the trainer does)."""
  abstract = jax.eval_shape(init)
  shard = parallel.state_shardings(abstract, mesh, cfg.sharding_rules,
                                   models.get_module(cfg.model.name).logical_axes)
  state = states.initialize(init, shard) if fresh is None else jax.device_put(fresh, shard)
  _run.fresh = jax.device_get(state)
  data = parallel.batch_sharding(mesh)
  gb = parallel.global_batch(batch, data)
  hist = []
  with parallel.sharding(mesh, cfg.sharding_rules):   # as the trainer does: activations pinned too
    lowered = jax.jit(step, in_shardings=(shard, data), out_shardings=(shard, None), donate_argnums=0).lower(state, gb)
    _run.hlo = lowered.as_text()
    f = lowered.compile()
    for _ in range(2):
      state, m = f(state, gb)
      hist.append(jax.device_get(m))
  return hist, state, shard, abstract


FAMILIES = {'bert': (BERT, _text_batch), 'gpt2': (GPT2, _lm_batch), 'resnet': (RESNET, lambda: digits_batch(16))}
# Where tensor parallelism must split (parameter, dimension): layer 0's first attention kernel by output, the
# MLP's projection back by input, a LoRA factor along its layer's split (and GPT-2's embedding by vocabulary).
TP_PARAMS = {'bert': [(('bert', 'encoder', 'layer', 0, 'attention', 'self', 'query', 'kernel'), 1),
                      (('bert', 'encoder', 'layer', 0, 'output', 'dense', 'kernel'), 0),
                      (('bert', 'encoder', 'layer', 0, 'attention', 'self', 'value', 'lora_b'), 1)],
             'gpt2': [(('transformer', 'wte', 'embedding'), 0),          # the tied LM head's vocabulary
                      (('transformer', 'h', 0, 'attn', 'c_attn', 'kernel'), 1),
                      (('transformer', 'h', 0, 'mlp', 'c_proj', 'kernel'), 0),
                      (('transformer', 'h', 0, 'attn', 'c_proj', 'lora_a'), 0)]}


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def family(request):
  model, make_batch = FAMILIES[request.param]
  batch = make_batch()
  cfg, init, step = _setup(model)
  one = _run(cfg, init, step, batch, parallel.make_mesh((1,), ('data',), jax.devices()[:1]))
  return request.param, cfg, init, step, batch, one, _run.fresh


@pytest.mark.parametrize('strategy', sorted(MESHES))
def test_strategy_matches_one_device(family, strategy):
  name, cfg, init, step, batch, (h1, s1, _, _), fresh = family
  shape, axes = MESHES[strategy]
  # The single-device initial state, copied into the strategy's layout; fsdp_tp, the most split layout,
  # initialises straight into it, as the trainer does, so the sharded init is checked against it too.
  h8, s8, shard, _ = _run(cfg, init, step, batch, parallel.make_mesh(shape, axes),
                          None if strategy == 'fsdp_tp' else fresh)
  for a, b in zip(h1, h8):
    np.testing.assert_allclose(a['train/loss'], b['train/loss'], rtol=2e-5)
    np.testing.assert_allclose(a['train/grad_norm'], b['train/grad_norm'], rtol=1e-4)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
               jax.device_get(s1.params), jax.device_get(s8.params))
  split = {a for s in jax.tree.leaves(shard.params) for a in s.spec if a is not None}
  if strategy == 'dp':
    assert not split                                  # every parameter replicated
  else:
    # ResNets have no tensor-parallel axis: under `model` they are replicated, as data parallelism.
    assert split == ({'fsdp', 'model'} if name in TP_PARAMS else {'fsdp'}) & set(axes)
  if strategy != 'dp':                            # activations carry their constraints into the program
    assert 'sharding_constraint' in _run.hlo or 'Sharding' in _run.hlo
  if name in TP_PARAMS and 'tp' in strategy:     # attention and MLP really split over `model`
    for path, dim in TP_PARAMS[name]:
      assert functools.reduce(lambda node, k: node[k], path, shard.params).spec[dim] == 'model', path


def test_fsdp_holds_an_eighth_of_parameters_and_optimizer_state(family):
  _, cfg, init, step, batch, (_, _, _, abstract), _ = family
  mesh = parallel.make_mesh((8,), ('fsdp',))
  shard = parallel.state_shardings(abstract, mesh, cfg.sharding_rules,
                                   models.get_module(cfg.model.name).logical_axes)
  rep = jax.tree.map(lambda _: parallel.replicated(mesh), abstract)
  part = lambda s: parallel.bytes_per_device(abstract.params, s.params) + parallel.bytes_per_device(
      abstract.opt_state, s.opt_state)
  assert part(shard) <= part(rep) / 7, (part(shard), part(rep))


@pytest.fixture(scope='module')
def topology_runs(tmp_path_factory):
  """One FSDP run of 20 steps on 8 devices (this process), saving every 5 steps; cut back to step 10
  and resumed on 1 device (a process with one device), which saves steps 15 and 20; cut back to that
  run's step 15 and resumed on 8 devices. Each direction's resume must continue to the first run's losses."""
  import json
  import shutil
  from conftest import run_cli, run_main
  workdir = tmp_path_factory.mktemp('topology')
  args = ['--config=configs/resnet_digits.py:smoke', f'--workdir={workdir}', "--config.mesh_axes=('fsdp',)",
          '--config.checkpoint.best_metric=', '--config.evals.eval.every=0', '--config.checkpoint.every=5',
          '--config.checkpoint.keep=3', '--config.model.stages=(1, 1)']    # a small ResNet: faster compiles
  metrics = lambda: [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  r = run_cli(*args, one_device=False)               # this process's 8 devices
  assert r.returncode == 0, r.stderr[-2000:]
  assert "'fsdp': 8" in r.stdout
  full = metrics()
  for step in (15, 20):                                      # back to step 10, as after a crash
    shutil.rmtree(workdir / 'checkpoints' / str(step))
  r = run_main(*args, devices=1)
  assert r.returncode == 0, r.stderr[-2000:]
  runs = {(8, 1): (full, r.stdout, metrics(), 10)}
  shutil.rmtree(workdir / 'checkpoints' / '20')              # back to step 15, saved by the 1-device run
  r = run_cli(*args, one_device=False)
  assert r.returncode == 0, r.stderr[-2000:]
  runs[(1, 8)] = (full, r.stdout, metrics(), 15)
  return runs


@pytest.mark.parametrize('first,second', [(8, 1), (1, 8)], ids=['8-to-1', '1-to-8'])
def test_checkpoint_restores_onto_another_topology(first, second, topology_runs):
  """Saved under FSDP on `first` devices, resumed on `second`: the run continues to the same losses."""
  full, stdout, again, step = topology_runs[first, second]
  assert 'resumed from' in stdout and f'checkpoints/{step}' in stdout and f"'fsdp': {second}" in stdout
  assert [x['step'] for x in again] == [x['step'] for x in full]
  for a, b in zip(full, again):
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=1e-6, err_msg=f'{k} at step {a["step"]}')


def test_aot_memory_report_for_a_mesh_without_training(tmp_path):
  import re
  import subprocess
  import sys
  from conftest import ROOT, main_env
  r = subprocess.run([sys.executable, '-m', 'ftjax.aot', '--config=configs/bert_base_mlm.py:smoke',
                      f'--workdir={tmp_path}', '--devices=8', "--config.mesh_axes=('fsdp',)",
                      '--config.model.num_hidden_layers=1'],
                     cwd=ROOT, env=main_env(1), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "mesh {'fsdp': 8}" in r.stdout
  mib = {k: float(v.replace(',', '')) for k, v in re.findall(r'^\s+(\w+)\s+([\d,.]+) MiB', r.stdout, re.M)}
  params, unsharded = mib['params'], float(re.search(r'unsharded ([\d,.]+) MiB', r.stdout).group(1))
  assert params <= unsharded / 7 and mib['optimizer_state'] <= 2 * unsharded / 7
  assert mib['temporaries'] > 0 and not (tmp_path / 'checkpoints').exists()     # compiled, never run
