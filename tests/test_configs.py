"""Every config loads, stays short, shrinks with `:smoke`; the ImageNet recipe runs on generated data."""
import glob
import importlib.util
import json
import os

import numpy as np
import pytest

from conftest import ROOT, run_cli

CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_is_short_and_has_smoke(path):
  with open(path) as f:
    assert len(f.read().splitlines()) < 80
  mod = load(path)
  full, smoke = mod.get_config(), mod.get_config('smoke')
  if 'runs' in full:       # an experiment: its smoke runs some of its runs (label_efficiency: fewer sizes)
    assert set(smoke.order) <= set(full.order) and smoke.order
  pairs = [(full.runs[k], smoke.runs[k]) for k in smoke.order] if 'runs' in full else [(full, smoke)]
  for f, s in pairs:       # every run shrinks
    assert f.model.name and f.input.dataset
    steps = lambda c: c.total_steps if c.total_steps > 0 else float('inf')
    assert steps(s) < steps(f) or s.input.batch_size < f.input.batch_size


TEXT_SMOKES = ['bert_mlm_pydoc.py:smoke', 'bert_base_mlm.py:smoke', 'bert_glue.py:stsb,smoke',
               'bert_glue.py:mrpc,smoke']     # bert_finetune_sentiment.py:smoke: in the demo's smoke run


@pytest.mark.parametrize('config', TEXT_SMOKES)
def test_text_config_smoke_runs(config, tmp_path):
  proc = run_cli(f'--config=configs/{config}', f'--workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "mesh {'data': 1} (1 of 8 devices)" in proc.stdout          # run_cli's mesh_shape=(1,)
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert losses and all(np.isfinite(losses))
  metric = 'eval/pearson' if 'stsb' in config else 'eval/accuracy'
  assert any(metric in r for r in rows)


def test_imagenet_recipe_smoke_runs_on_generated_data(tmp_path):
  proc = run_cli('--config=configs/resnet50_imagenet.py:smoke', f'--workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  cfg = json.loads((tmp_path / 'config.json').read_text())
  assert cfg['model']['depth'] == 50 and cfg['optim']['nesterov'] and cfg['model']['dtype'] == 'bfloat16'
  with open(tmp_path / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  assert [r['step'] for r in rows if 'train/loss' in r] == [1, 2, 3, 4]
  assert any('eval/accuracy' in r for r in rows)


@pytest.mark.parametrize('package,what', [('models', 'model.name'), ('tasks', 'task.name'), ('evals', 'evals.x.type')])
def test_unknown_component_names_are_user_errors(package, what):
  from ftjax import registry
  from ftjax.errors import UserError
  with pytest.raises(UserError, match=f"{what}='nope': no module ftjax/{package}/nope.py"):
    registry.load(package, 'nope', what)
  assert registry.load(package, {'models': 'resnet', 'tasks': 'classification', 'evals': 'classification'}[package],
                       what).__name__.startswith('ftjax.')


@pytest.mark.parametrize('config', ['simclr_imagenet.py:smoke'])     # simclr_digits: in the demo's smoke run
def test_simclr_config_smoke_runs_with_feature_evaluators(config, tmp_path):
  proc = run_cli(f'--config=configs/{config}', f'--workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert losses and all(np.isfinite(losses))
  last = rows[-1]
  assert {'probe/accuracy', 'fewshot/5shot', 'knn/accuracy'} <= set(last) or \
      {'probe/accuracy', 'fewshot/5shot', 'knn/accuracy'} <= {k for r in rows for k in r}


def _rows(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize('config,prompt', [('gpt2_pydoc.py:smoke', 'Return a new list'), ('gpt2_small.py:smoke', 'The')])
def test_gpt_pretraining_smoke_logs_perplexity_unigram_and_a_sample(config, prompt, tmp_path):
  proc = run_cli(f'--config=configs/{config}', f'--workdir={tmp_path}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  last = _rows(tmp_path)[-1]
  assert np.isfinite(last['eval/perplexity']) and last['eval/unigram_perplexity'] > 1
  assert f"eval/sample: '{prompt}' -> '" in proc.stdout     # the greedy continuation, printed
  assert (tmp_path / 'tokenizer.json').exists()          # the BPE travels with the run


def test_gpt2_small_is_the_124m_recipe():
  c = load(os.path.join(ROOT, 'configs', 'gpt2_small.py')).get_config('fsdp')
  assert (c.model.n_embd, c.model.n_layer, c.model.n_head, c.model.n_positions, c.input.max_len) == (768, 12, 12, 1024, 1024)
  assert (c.optim.lr, c.optim.b2, c.optim.weight_decay, c.optim.clip_norm) == (6e-4, 0.95, 0.1, 1.0)
  assert c.schedule.name == 'cosine' and c.schedule.warmup_steps > 0 and c.model.dtype == 'bfloat16'
  assert c.mesh_axes == ('fsdp',) and c.input.tokenizer == 'bpe:50257'
  c = load(os.path.join(ROOT, 'configs', 'gpt2_small.py')).get_config('data=c.jsonl,tokenizer=gpt2')
  assert c.input.tokenizer == 'gpt2' and c.model.eos_token_id is None and c.input.batch_size * c.input.max_len == 2 ** 19


def test_gpt_finetune_config_arms_differ_only_in_the_starting_weights():
  # Its run from the causal-LM run is tested in the main job's smoke test (tests/test_demo.py).
  c = load(os.path.join(ROOT, 'configs', 'gpt_finetune_sentiment.py'))
  pretrained, scratch = c.get_config(None), c.get_config('init=scratch')
  assert pretrained.init.source == 'runs/gpt_sentiment_lm' and pretrained.input.tokenizer == 'runs/gpt_sentiment_lm'
  assert scratch.init.source == '' and scratch.input.tokenizer == 'runs/gpt_sentiment_lm'
  scratch.init.source = pretrained.init.source
  assert scratch.to_json() == pretrained.to_json()
