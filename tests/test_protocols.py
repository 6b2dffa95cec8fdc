"""The plug-in contracts (ftjax/protocols.py) and the one config schema (ftjax/defaults.py): every shipped
component implements its protocol, every parameter has explicit sharding axes, every shipped config
takes the model keys the README lists, and an unknown key fails before compute with one line."""
import glob
import os

import jax
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from conftest import ROOT, run_cli
from ftjax import defaults, evals, models, parallel, protocols, registry, tasks, trees
from ftjax.errors import UserError

CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def _modules(package):
  skip = {'__init__', 'lora'}
  return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'ftjax', package, '*.py'))
                if os.path.basename(p)[:-3] not in skip)


@pytest.mark.parametrize('name', _modules('models'))
def test_model_families_implement_the_protocol(name):
  fam = models.get_module(name)
  assert isinstance(fam, protocols.ModelFamily), [a for a in protocols.ModelFamily.__protocol_attrs__
                                                   if not hasattr(fam, a)]
  assert set(fam.defaults()).isdisjoint(models.COMMON)


@pytest.mark.parametrize('name', _modules('tasks'))
def test_tasks_implement_the_protocol(name):
  assert issubclass(registry.load('tasks', name, 'task.name').Task, protocols.Task)
  cfg = defaults.base_config().task
  cfg.name = name
  assert isinstance(tasks.build(cfg), protocols.Task)


@pytest.mark.parametrize('name', _modules('evals'))
def test_evaluators_implement_the_protocol(name):
  mod = evals.get_module(name)
  assert issubclass(mod.Evaluator, protocols.Evaluator)
  assert isinstance(mod.DEFAULTS, dict) and set(mod.DEFAULTS).isdisjoint(evals.COMMON)
  assert set(defaults.eval_config(type=name)) == set(evals.COMMON) | set(mod.DEFAULTS)


# Every head and variant of each family, LoRA included: the parameters whose axes must be explicit.
VARIANTS = {
    'bert': [dict(head=h, vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=16, lora=dict(rank=2, targets='query|value|dense'))
             for h in ('none', 'mlm', 'pretraining', 'classification', 'token_classification', 'qa')],
    'gpt2': [dict(head=h, vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_inner=32, n_positions=16,
                  lora=dict(rank=2, targets='c_attn|c_proj')) for h in ('none', 'lm', 'classification')],
    'resnet': [dict(depth=18, width=0.125, stem='small', num_classes=10, lora=dict(rank=2, targets='head')),
               dict(depth=50, stages=(1, 1, 1, 1), width=0.125, projection=(16, 8), num_classes=0),
               dict(depth=50, stages=(1, 1, 1, 1), width=0.125, version='v2', num_classes=3)],
}
KNOWN_AXES = {name for name, _ in parallel.DEFAULT_RULES}


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_every_parameter_has_explicit_logical_axes(name):
  fam = models.get_module(name)
  for variant in VARIANTS[name]:
    model = nnx.eval_shape(lambda v=variant: models.build({'name': name, **v}, nnx.Rngs(0)))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    leaves = [*trees.flat(nnx.to_pure_dict(params)).items(), *trees.flat(nnx.to_pure_dict(rest)).items()]
    leaves = [(n, x) for n, x in leaves if hasattr(x, 'shape') and x.ndim]
    assert len(leaves) > 10
    for dotted, x in leaves:
      axes = fam.logical_axes(dotted, x.ndim)
      assert len(axes) == x.ndim and set(axes) - {None} <= KNOWN_AXES, (dotted, axes)
  with pytest.raises(ValueError, match='no logical axes'):
    fam.logical_axes('made_up.module.kernel', 2)


def test_feature_evaluator_reads_its_own_dataset_unpacked(monkeypatch):
  """A probe with its own `dataset` (a labelled set) on an MLM or causal-LM run reads it example by
  example: input.pack, causal_pack and doc_mask reset there, the run's own input untouched."""
  from ftjax import data
  seen = []
  monkeypatch.setattr(data, 'check_split', lambda cfg, split, pp: seen.append((cfg, split)))
  config = defaults.base_config('gpt2')
  config.input.update(dataset='ftjax_pydoc', train_split='train[:5%]', causal_pack=True, doc_mask=True)
  config.lock()
  cfg = evals.resolve('evals.probe', dict(type='knn', dataset='ftjax_sentiment', train_split='train', split='test'))
  mesh = parallel.make_mesh((1,), ('data',), jax.devices()[:1])
  evals.FeatureEvaluator('probe', cfg, config=config, embed_fn=None, mesh=mesh)
  assert [split for _, split in seen] == ['train', 'test']
  for probe_input, _ in seen:
    assert probe_input.dataset == 'ftjax_sentiment'
    assert not (probe_input.pack or probe_input.causal_pack or probe_input.doc_mask)
  assert config.input.causal_pack and config.input.doc_mask and config.input.dataset == 'ftjax_pydoc'


def test_activations_follow_the_rules_table():
  """parallel.constrain reads config.sharding_rules, the table the parameters use."""
  mesh = parallel.make_mesh((4, 2), ('data', 'model'))
  x = jax.numpy.zeros((8, 6, 4, 2))
  shardings = {}
  for label, rules in (('default', parallel.DEFAULT_RULES), ('no tp', (('batch', ('data',)),))):
    with parallel.sharding(mesh, rules):
      f = jax.jit(lambda x: parallel.constrain(x * 2, ('batch', None, 'heads', None)))
      shardings[label] = f(x).sharding
  spec = lambda *axes: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))
  assert shardings['default'].is_equivalent_to(spec('data', None, 'model', None), 4)
  assert shardings['no tp'].is_equivalent_to(spec('data'), 4)
  assert not shardings['no tp'].is_equivalent_to(spec('data', None, 'model', None), 4)


def _parse(argv):
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


@pytest.mark.parametrize('config', CONFIGS)
def test_every_config_takes_remat_dtype_and_attention_overrides(config):
  """The README's accelerator keys exist in every shipped config and its smoke variant: overriding
  them parses, completes and builds the model (abstractly: no compute)."""
  for arg in ('', ':smoke'):
    path = os.path.join(ROOT, 'configs', config) + arg
    plain = _parse(['x', f'--config={path}'])
    runs = list(plain.runs) if 'runs' in plain else [None]
    for run in runs:
      prefix = f'--config.runs.{run}.model.' if run else '--config.model.'
      cfg = plain.runs[run] if run else plain
      extra = ['attention=xla'] if 'attention' in models.defaults(cfg.model.name) else []   # bert, gpt2
      argv = ['x', f'--config={path}'] + [prefix + kv for kv in ['remat=full', 'dtype=bfloat16'] + extra]
      parsed = _parse(argv)
      full = defaults.complete(parsed.runs[run] if run else parsed)
      assert full.model.remat == 'full' and full.model.dtype == 'bfloat16'
      if extra:
        assert full.model.attention == 'xla'
      model_cfg = dict(full.model)
      if model_cfg.get('config', '').startswith('package:') or model_cfg.get('config'):
        continue            # architecture from a file: building it is covered by the HF tests
      nnx.eval_shape(lambda m=model_cfg: models.build(m, nnx.Rngs(0)))


def test_schema_is_complete_in_the_resolved_config():
  c = defaults.base_config('bert')
  assert {'remat', 'dtype', 'attention', 'hidden_size', 'pooling', 'head', 'lora', 'config'} <= set(c.model)
  c = defaults.base_config('gpt2')
  assert {'remat', 'dtype', 'attention', 'n_embd', 'n_layer', 'head', 'num_labels', 'lora', 'config'} <= set(c.model)
  c = defaults.base_config('resnet')
  assert {'remat', 'dtype', 'depth', 'width', 'stem', 'stages', 'projection', 'num_classes'} <= set(c.model)
  e = defaults.eval_config(type='fewshot', split='test')
  assert e.shots == (1, 5, 10, 25) and e.train_split == '' and e.every == 0


def test_unknown_keys_are_one_clear_error():
  c = defaults.base_config('resnet')
  c.model.dpeth = 18
  with pytest.raises(UserError, match=r"model\.dpeth: no such key for model.name='resnet'"):
    defaults.complete(c)
  with pytest.raises(UserError, match=r"eval_config\(type='knn'\)\.shots: no such key for type='knn'"):
    defaults.eval_config(type='knn', shots=(1,))
  c = defaults.base_config('resnet')
  c.optim.learning_rate = 0.1
  with pytest.raises(UserError, match=r'optim\.learning_rate: no such key'):
    defaults.complete(c)


@pytest.mark.parametrize('setting,message', [
    ("c.model.dpeth = 18", "model.dpeth: no such key for model.name='resnet'"),
    ("c.evals.eval = eval_config(split='validation', shots=(1,))", "eval_config(type='classification').shots"),
])
def test_unknown_key_in_a_config_file_fails_before_compute(tmp_path, setting, message):
  path = tmp_path / 'cfg.py'
  path.write_text('from ftjax.defaults import eval_config\n'
                  'import importlib.util\n'
                  f'spec = importlib.util.spec_from_file_location("d", {os.path.join(ROOT, "configs", "resnet_digits.py")!r})\n'
                  'mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n'
                  'def get_config():\n'
                  '  c = mod.get_config("smoke")\n'
                  f'  {setting}\n'
                  '  return c\n')
  proc = run_cli(f'--config={path}', f'--workdir={tmp_path / "w"}', one_device=False)   # python -m ftjax.main, in-process
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr, proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'w').exists()


def test_no_private_names_across_modules():
  """A module's underscore names are its own: no `from ftjax.x import _y`, no `x._y` on an ftjax module
  (tests aside). What another module needs is public, and named so."""
  import ast
  bad = []
  for path in glob.glob(os.path.join(ROOT, 'ftjax', '**', '*.py'), recursive=True):
    tree = ast.parse(open(path).read())
    modules = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('ftjax'):
        bad += [f'{path}: from {node.module} import {a.name}' for a in node.names if a.name.startswith('_')]
        modules |= {a.asname or a.name for a in node.names}
      elif isinstance(node, ast.Import):
        modules |= {a.asname or a.name.split('.')[0] for a in node.names if a.name.startswith('ftjax')}
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
          and node.attr.startswith('_') and not node.attr.startswith('__')):
        bad.append(f'{path}:{node.lineno}: {node.value.id}.{node.attr}')
  assert not bad, bad
