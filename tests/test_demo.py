"""The main job's machinery: an experiment of several runs, references between them, the report."""
import json

from PIL import Image

from conftest import run_cli, run_main


def test_demo_smoke_writes_the_report_and_skips_finished_runs_on_rerun(tmp_path):
  w = tmp_path / 'demo'
  r = run_main('--config=configs/demo.py:smoke', f'--workdir={w}', timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.loads((w / 'report.json').read_text())
  cells = [x for x in rows if 'aggregate' not in x]
  assert sorted((x['task'], x['init'], x['seed']) for x in cells) == sorted(
      (t, v, k) for t in ('digits', 'sentiment text', 'sentiment text, GPT') for v in ('scratch', 'pretrained') for k in (0, 1))
  for x in cells:
    assert set(x) == {'task', 'init', 'metric', 'seed', 'value'} and 0.0 <= x['value'] <= 1.0
  # The seeds are different runs: their own seed in the config, their own numbers.
  seeds = {json.loads((w / f'digits_scratch/s{k}/config.json').read_text())['seed'] for k in (0, 1)}
  assert seeds == {0, 1}
  assert {x['aggregate'] for x in rows if 'aggregate' in x} == {'mean', 'paired_difference', 'steps_to_target'}
  md = (w / 'report.md').read_text()
  assert '| sentiment text | test_accuracy |' in md and 'points [' in md and '95% t-interval' in md
  assert 'linear SVM on frozen MiniLM features' in md and 'linear SVM on 250 labels, SimCLR features' in md
  assert 'Cost to reach the target' in md
  for png in ('curves.png', 'comparison.png'):
    with Image.open(w / png) as im:
      assert im.size[0] > 300 and im.size[1] > 200
  # The fine-tuned runs really started from their pretraining runs' weights.
  assert 'loaded' in r.stdout and f'{w}/digits_simclr' in r.stdout and f'{w}/text_mlm' in r.stdout
  assert r.stdout.count(f'{w}/digits_simclr') >= 3        # the shared pretraining run: once, read by both seeds
  # GPT: every decoder tensor of the causal-LM run (wte, wpe, 2 blocks x 12, ln_f: 28); only the classifier is new.
  assert r.stdout.count(f'loaded 28 tensors from {w}/gpt_lm/checkpoints/6') == 2
  assert 'freshly initialised (absent, or init.reinit): score.kernel\n' in r.stdout
  assert 'GPT causal LM: validation perplexity' in md and 'GPT causal LM: unigram perplexity' in md
  # Rerun: every training run is already finished, the report is written again.
  again = run_cli('--config=configs/demo.py:smoke', f'--workdir={w}', one_device=False)   # in-process: nothing compiles
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count('nothing to do') == 15     # 3 pretraining runs, 6 fine-tuning arms x 2 seeds
  assert json.loads((w / 'report.json').read_text()) == rows


def test_experiment_reference_to_a_later_run_is_a_user_error(tmp_path):
  r = run_cli('--config=configs/demo.py:smoke', f'--workdir={tmp_path}',
              "--config.order=('digits_pretrained', 'digits_simclr')", one_device=False)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      "ftjax: error: init.source='run:digits_simclr': no earlier run named 'digits_simclr'")


def test_seeds_and_shared_runs_are_checked_before_any_run(tmp_path):
  def error(*overrides):
    r = run_cli('--config=configs/demo.py:smoke', f'--workdir={tmp_path}', *overrides, one_device=False)
    assert r.returncode == 2 and not any(tmp_path.iterdir())
    return r.stderr.strip().splitlines()[-1]
  assert error('--config.seeds=(0, 0)') == 'ftjax: error: seeds=(0, 0): distinct non-negative integers, e.g. (0, 1, 2)'
  assert error("--config.shared=('digits_random', 'text_mlm', 'minilm_features', 'digits_pretrained')") == (
      "ftjax: error: init.source='run:digits_simclr': a run shared by all seeds cannot read the seeded run "
      "'digits_simclr'")
  assert error("--config.shared=('digits_simclr', 'nope')") == (
      "ftjax: error: shared names runs the experiment does not define: ['nope']")
