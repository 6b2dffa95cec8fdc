"""The main job's machinery: an experiment of several runs, references between them, the report."""
import json

from PIL import Image

from conftest import run_cli, run_main


def test_demo_smoke_writes_the_report_and_skips_finished_runs_on_rerun(tmp_path):
  w = tmp_path / 'demo'
  r = run_main('--config=configs/demo.py:smoke', f'--workdir={w}', timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.loads((w / 'report.json').read_text())
  assert {(x['task'], x['init']) for x in rows} == {
      ('digits', 'scratch'), ('digits', 'pretrained'), ('sentiment text', 'scratch'),
      ('sentiment text', 'pretrained'), ('sentiment text', 'minilm')}
  for x in rows:
    assert set(x) == {'task', 'init', 'metric', 'value'} and 0.0 <= x['value'] <= 1.0
  md = (w / 'report.md').read_text()
  assert '| sentiment text | test_accuracy |' in md and 'points' in md
  for png in ('curves.png', 'comparison.png'):
    with Image.open(w / png) as im:
      assert im.size[0] > 300 and im.size[1] > 200
  # The fine-tuned runs really started from their pretraining runs' weights.
  assert 'loaded' in r.stdout and f'{w}/digits_simclr' in r.stdout and f'{w}/text_mlm' in r.stdout
  # Rerun: every training run is already finished, the report is written again.
  again = run_cli('--config=configs/demo.py:smoke', f'--workdir={w}', one_device=False)   # in-process: nothing compiles
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('nothing to do') == 7
  assert json.loads((w / 'report.json').read_text()) == rows


def test_experiment_reference_to_a_later_run_is_a_user_error(tmp_path):
  r = run_cli('--config=configs/demo.py:smoke', f'--workdir={tmp_path}',
              "--config.order=('digits_pretrained', 'digits_simclr')", one_device=False)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      "ftjax: error: init.source='run:digits_simclr': no earlier run named 'digits_simclr'")
