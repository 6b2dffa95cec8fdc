"""The benchmark harness runs both frameworks in one invocation and reports consistent numbers (tiny
shapes: speed targets are for `python -m ftjax.bench` itself, not for tests)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, main_env


def test_bench_smoke_reports_both_frameworks_and_their_ratio(tmp_path):
  out = tmp_path / 'bench.json'
  r = subprocess.run([sys.executable, '-m', 'ftjax.bench', '--smoke', '--steps=3', '--warmup=1', '--input',
                      f'--json={out}'], cwd=ROOT, env=main_env(1), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.loads(out.read_text())
  assert [x['name'] for x in rows] == ['bert_base_mlm', 'resnet50']
  for x in rows:
    assert x['ftjax_step_s'] > 0 and x['torch_step_s'] > 0
    assert x['ratio'] == pytest.approx(x['ftjax_step_s'] / x['torch_step_s'])
    assert x['flops_per_step'] > 0 and 0 < x['mfu'] < 1
    assert x['examples_per_s'] == pytest.approx(x['batch'] / x['ftjax_step_s'])
    assert x['input_examples_per_s'] > 0
  assert '| ftjax / torch |' in r.stdout and 'bert_base_mlm' in r.stdout
