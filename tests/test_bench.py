"""The benchmark harness runs both frameworks in one invocation and reports consistent numbers (tiny
shapes: speed targets are for `python -m ftjax.bench` itself, not for tests)."""
import json

import pytest


def test_bench_smoke_reports_both_frameworks_and_their_ratio(tmp_path, capsys):
  """`python -m ftjax.bench ARGS`, run in this process (its main takes argv; it times on one device).
  Small batch and images, the tests' unoptimised XLA (conftest): the numbers' consistency is the point.
  The GPT-2 rows (train step, and --decode: KV cache against full recomputation) use one layer and
  three new tokens at one batch size: what they add is two more compiled programs, not their speed."""
  from ftjax import bench
  out = tmp_path / 'bench.json'
  returned = bench.main(['--smoke', '--batch=2', '--image=32', '--steps=2', '--warmup=1', '--input', f'--json={out}',
                         '--gpt2_dims=n_layer=1', '--decode', '--decode_batches=2', '--new_tokens=3',
                         '--decode_repeats=1', '--compile_depths=1,3'])
  stdout = capsys.readouterr().out
  rows = json.loads(out.read_text())
  assert rows == json.loads(json.dumps(returned))
  train = [x for x in rows if x['kind'] == 'train']
  decode = [x for x in rows if x['kind'] == 'decode']
  assert [x['name'] for x in train] == ['bert_base_mlm', 'resnet50', 'gpt2_small']
  for x in train:
    assert x['ftjax_step_s'] > 0 and x['torch_step_s'] > 0
    assert (x['steps'], x['rounds'], len(x['ftjax_round_s']), len(x['torch_round_s'])) == (2, 1, 1, 1)
    assert x['ftjax_step_s'] == pytest.approx(x['ftjax_round_s'][0] / 2)
    assert x['ratio'] == pytest.approx(x['ftjax_step_s'] / x['torch_step_s'])
    assert x['flops_per_step'] > 0 and 0 < x['mfu'] < 1
    assert x['examples_per_s'] == pytest.approx(x['batch'] / x['ftjax_step_s'])
    assert x['input_examples_per_s'] > 0
  gpt2 = train[2]
  assert gpt2['dims'] == 'n_layer=1' and gpt2['shape'] == 'S=32'
  assert gpt2['tokens_per_s'] == pytest.approx(2 * 32 / gpt2['ftjax_step_s'])
  assert '| ftjax / torch |' in stdout and 'bert_base_mlm' in stdout and '| gpt2_small (n_layer=1) | 2 | S=32 |' in stdout

  [d] = decode
  assert (d['name'], d['batch'], d['new_tokens'], d['prompt_len']) == ('gpt2_small', 2, 3, 16)
  assert d['cached_s'] > 0 and d['full_s'] > 0 and 0 <= d['same_tokens'] <= 1
  assert d['speedup'] == pytest.approx(d['full_s'] / d['cached_s'])
  for path in ('cached', 'full'):
    assert d[f'{path}_tokens_per_s'] == pytest.approx(2 * 3 / d[f'{path}_s'])
    assert d[f'{path}_ms_per_token'] == pytest.approx(1e3 * d[f'{path}_s'] / 3)
  assert '| speed-up |' in stdout and '| gpt2_small (n_layer=1) decode |' in stdout

  compiled = [x for x in rows if x['kind'] == 'compile']     # compile seconds by depth, unrolled and scanned
  assert [(x['name'], x['layers']) for x in compiled] == [('bert_base_mlm', 1), ('bert_base_mlm', 3)]
  for x in compiled:
    assert all(x[f'{k}_{t}_s'] > 0 for k in ('unrolled', 'scan') for t in ('lower', 'compile'))
  assert '| scan_layers: compile (s) |' in stdout and '| bert_base_mlm | 3 | 2 | S=32 |' in stdout


def test_bench_e2e_rows_time_whole_loops_of_both_frameworks(tmp_path, capsys):
  """--e2e at --smoke sizes: the real MiniLM weights and input pipeline (train[:64], 16 tokens), three timed
  steps, one round; the evaluation over test[:40] in batches of 16 (the last one padded). Both frameworks
  must have run the same job: the same parameter count, the same tweets tokenised to the same tokens."""
  from ftjax import bench
  out = tmp_path / 'e2e.json'
  returned = bench.main(['--smoke', '--models=', '--e2e=minilm_finetune,minilm_eval,resnet18_small', f'--json={out}'])
  stdout = capsys.readouterr().out
  rows = json.loads(out.read_text())
  assert rows == json.loads(json.dumps(returned))
  assert [(x['name'], x['kind']) for x in rows] == [('minilm_finetune', 'e2e'), ('minilm_eval', 'e2e'),
                                                    ('resnet18_small', 'e2e')]
  finetune, evaluation, resnet = rows
  for x in rows:
    assert x['ftjax_examples_per_s'] > 0 and x['torch_examples_per_s'] > 0 and x['compile_s'] > 0
    assert x['ratio'] == pytest.approx(x['ftjax_examples_per_s'] / x['torch_examples_per_s'])
    for side in ('ftjax', 'torch'):     # examples/s is the examples counted over the seconds timed
      assert x[f'{side}_examples_per_s'] == pytest.approx(x['examples'] / x[f'{side}_round_s'][0])
  for x, batch, shape in ((finetune, 8, 'S=16'), (resnet, 16, '12px')):
    assert (x['batch'], x['shape'], x['steps'], x['rounds'], x['examples']) == (batch, shape, 3, 1, 3 * batch)
    assert x['ftjax_params'] == x['torch_params'] > 0
    assert 0 < x['ftjax_loss'] < 5 and 0 < x['torch_loss'] < 5
  assert finetune['ftjax_params'] > 20e6          # MiniLM-L6's 22.7 M, not a tiny stand-in
  assert finetune['no_input_examples_per_s'] > 0 and finetune['input_examples_per_s'] > 0
  assert resnet['no_input_examples_per_s'] > 0 and 'input_examples_per_s' not in resnet     # random data: no pipeline

  assert (evaluation['split'], evaluation['batch'], evaluation['shape']) == ('test[:40]', 16, 'S=16')
  assert evaluation['examples'] == evaluation['torch_examples'] == 40 and evaluation['padded_rows'] == 8
  assert evaluation['ftjax_tokens'] == evaluation['torch_tokens'] > 2 * 40      # [CLS] text [SEP], both tokenisers
  assert evaluation['no_input_examples_per_s'] > 0 and evaluation['input_examples_per_s'] > 0

  assert '| ftjax / torch ex/s (>1: ftjax faster) |' in stdout
  assert '| minilm_finetune | 8 | S=16 | 24 |' in stdout and '| minilm_eval | 16 | S=16 | 40 |' in stdout
  assert '| resnet18_small | 16 | 12px | 48 |' in stdout
