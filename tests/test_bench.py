"""The benchmark harness runs both frameworks in one invocation and reports consistent numbers (tiny
shapes: speed targets are for `python -m ftjax.bench` itself, not for tests)."""
import json

import pytest


def test_bench_smoke_reports_both_frameworks_and_their_ratio(tmp_path, capsys):
  """`python -m ftjax.bench ARGS`, run in this process (its main takes argv; it times on one device).
  Small batch and images, the tests' unoptimised XLA (conftest): the numbers' consistency is the point."""
  from ftjax import bench
  out = tmp_path / 'bench.json'
  returned = bench.main(['--smoke', '--batch=2', '--image=32', '--steps=2', '--warmup=1', '--input', f'--json={out}'])
  stdout = capsys.readouterr().out
  rows = json.loads(out.read_text())
  assert rows == json.loads(json.dumps(returned))
  assert [x['name'] for x in rows] == ['bert_base_mlm', 'resnet50']
  for x in rows:
    assert x['ftjax_step_s'] > 0 and x['torch_step_s'] > 0
    assert x['ratio'] == pytest.approx(x['ftjax_step_s'] / x['torch_step_s'])
    assert x['flops_per_step'] > 0 and 0 < x['mfu'] < 1
    assert x['examples_per_s'] == pytest.approx(x['batch'] / x['ftjax_step_s'])
    assert x['input_examples_per_s'] > 0
  assert '| ftjax / torch |' in stdout and 'bert_base_mlm' in stdout
