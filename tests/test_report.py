"""The report compares whatever variants the experiment names, against its baseline; none is dropped silently.

Fake run directories only (metrics.jsonl, evaluate.json): no training, no JAX.
"""
import importlib.util
import json
import os

import matplotlib
import matplotlib.axes
import numpy as np
import pytest
from ml_collections import ConfigDict

from conftest import ROOT
from ftjax import report, stats
from ftjax.errors import UserError

matplotlib.use('Agg')


def write_run(workdir, name, values: dict, evaluate=False):
  """A run's directory: a few training rows, then `values` last (or in evaluate.json, as an evaluate-only run)."""
  d = workdir / name
  d.mkdir(parents=True)
  if evaluate:
    (d / 'evaluate.json').write_text(json.dumps({'step': 0, 'source': 'init', 'metrics': values}))
    return
  rows = [{'step': 0, 'train/loss': 2.5}, {'step': 5, 'train/loss': 1.5, 'eval/accuracy': 0.5},
          {'step': 10, 'train/loss': 1.0, 'eval/accuracy': 0.25, **values}]
  (d / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))


def cells(rows):
  """report.json's per-cell rows, without the aggregates (means, differences, steps to target)."""
  return [r for r in rows if 'aggregate' not in r]


def table(md: str) -> dict:
  """report.md's first table as {task: {column: cell}}."""
  lines = md.split('\n\n')[1].splitlines()
  head = [h.strip() for h in lines[0].strip('|').split('|')]
  return {cells[0]: dict(zip(head, cells)) for cells in
          ([c.strip() for c in line.strip('|').split('|')] for line in lines[2:])}


@pytest.fixture
def drawn(monkeypatch):
  """What the plots really drew: bars (axes, label, x, height) and curves (axes, label, y values)."""
  seen = {'bars': [], 'lines': []}
  bar, plot = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.plot

  def record_bar(self, x, height, *a, label=None, **kw):
    seen['bars'] += [(self, label, xi, h) for xi, h in zip(x, height)]
    return bar(self, x, height, *a, label=label, **kw)

  def record_plot(self, *a, label=None, **kw):
    seen['lines'].append((self, label, list(a[1])))
    return plot(self, *a, label=label, **kw)

  monkeypatch.setattr(matplotlib.axes.Axes, 'bar', record_bar)
  monkeypatch.setattr(matplotlib.axes.Axes, 'plot', record_plot)
  return seen


VARIANTS = ('lr_1e-3', 'lr_1e-4', 'lr_3e-4', 'lr_1e-2')
LR = {('digits', 'lr_1e-3'): 0.8125, ('digits', 'lr_1e-4'): 0.875, ('digits', 'lr_3e-4'): 0.9375,
      ('digits', 'lr_1e-2'): 0.25, ('stsb', 'lr_1e-3'): 0.9, ('stsb', 'lr_1e-4'): 0.85, ('stsb', 'lr_3e-4'): 0.5,
      ('stsb', 'lr_1e-2'): 0.95}


def lr_config(**kw):
  return ConfigDict(dict(
      title='Learning rates', variants=VARIANTS, baseline='lr_1e-3',
      rows=[(task, v, f'{task}_{v}', 'test/accuracy' if task == 'digits' else 'test/pearson') for task, v in LR],
      curves={'digits': [f'digits_{v}' for t, v in LR if t == 'digits'],
              'stsb': [f'stsb_{v}' for t, v in LR if t == 'stsb']},
      eval_key='eval/accuracy', **kw))


def test_variants_of_any_name_all_reach_the_table_json_and_plots(tmp_path, drawn):
  for (task, v), value in LR.items():
    write_run(tmp_path, f'{task}_{v}', {'test/accuracy' if task == 'digits' else 'test/pearson': value})
  rows = report.write(str(tmp_path), lr_config(), {'digits_lr_1e-3': 12.0})

  assert json.loads((tmp_path / 'report.json').read_text()) == rows
  assert {(r['task'], r['init']): r['value'] for r in cells(rows)} == LR
  assert {(r['task'], r['metric']) for r in cells(rows)} == {('digits', 'test_accuracy'), ('stsb', 'test_pearson')}
  md = (tmp_path / 'report.md').read_text()
  assert md.startswith('# Learning rates\n')
  assert ('| task | metric | lr_1e-3 | lr_1e-4 | lr_3e-4 | lr_1e-2 | lr_1e-4 - lr_1e-3 | lr_3e-4 - lr_1e-3 '
          '| lr_1e-2 - lr_1e-3 |') in md
  t = table(md)
  assert list(t) == ['digits', 'stsb']
  for (task, v), value in LR.items():
    assert t[task][v] == f'{value:.4f}'
  assert t['digits']['metric'] == 'test_accuracy' and t['stsb']['metric'] == 'test_pearson'
  assert t['digits']['lr_1e-4 - lr_1e-3'] == '+0.0625'           # 0.875 - 0.8125
  assert t['stsb']['lr_1e-4 - lr_1e-3'] == '-0.0500'             # 0.85 - 0.9
  assert t['stsb']['lr_3e-4 - lr_1e-3'] == '-0.4000'             # 0.5 - 0.9
  assert t['digits']['lr_1e-2 - lr_1e-3'] == '-0.5625'           # 0.25 - 0.8125
  assert 'Run times: digits_lr_1e-3 12 s' in md and 'No value' not in md

  # Every cell is a bar, each variant in its own slot around its task's tick; every run has its curves.
  assert (tmp_path / 'comparison.png').stat().st_size > 0 and (tmp_path / 'curves.png').stat().st_size > 0
  bars = {(label, round(x)): (x, h) for _, label, x, h in drawn['bars']}
  assert {(['digits', 'stsb'][i], label): h for (label, i), (_, h) in bars.items()} == LR
  for i in (0, 1):
    xs = sorted(x for (label, j), (x, _) in bars.items() if j == i)
    assert len(xs) == 4 and all(b - a > 0.15 for a, b in zip(xs, xs[1:])) and i - 0.4 < xs[0] and xs[-1] < i + 0.4
    assert sum(xs) / 4 == pytest.approx(i)
  ax = drawn['bars'][0][0]
  assert ax.get_ylabel() == 'value' and ax.get_ylim() == (0, 1.05)      # two metrics, all in [0, 1]
  assert {lb for _, lb, _ in drawn['lines']} == {f'{t}_{v}' for t, v in LR}
  assert {(ax.get_title().split(': ')[1], lb) for ax, lb, _ in drawn['lines']} == (
      {('training loss', f'{t}_{v}') for t, v in LR} | {('eval/accuracy', f'{t}_{v}') for t, v in LR})


def test_metric_label_and_y_limit(tmp_path, drawn):
  write_run(tmp_path, 'a', {'test/loss': 2.25})
  write_run(tmp_path, 'b', {'test/loss': 0.5})
  rows = [('task', 'a', 'a', 'test/loss'), ('task', 'b', 'b', 'test/loss')]
  report.write(str(tmp_path), dict(title='t', rows=rows, baseline='a', difference='points'))
  ax = drawn['bars'][0][0]
  assert ax.get_ylabel() == 'test/loss' and ax.get_ylim()[1] > 2.25      # no 0..1.05 cut: a value is above 1
  assert table((tmp_path / 'report.md').read_text())['task']['b - a'] == '-175.0 points'
  assert not (tmp_path / 'curves.png').exists() and 'curves.png' not in (tmp_path / 'report.md').read_text()
  report.write(str(tmp_path), dict(title='t', rows=rows, metric_label='held-out loss'))
  assert drawn['bars'][-1][0].get_ylabel() == 'held-out loss'


def demo_config():
  spec = importlib.util.spec_from_file_location('demo', os.path.join(ROOT, 'configs', 'demo.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_the_demo_report_keeps_its_columns_and_its_one_difference(tmp_path, drawn):
  """The demo's report on one seed per arm (its runs as an unseeded experiment would leave them)."""
  cfg = demo_config().report
  values = {'digits_scratch': 0.9259, 'digits_pretrained': 0.937, 'sentiment_scratch': 0.554,
            'sentiment_pretrained': 0.6098, 'gpt_scratch': 0.5636, 'gpt_pretrained': 0.566}
  for run, v in values.items():
    write_run(tmp_path, run, {'test/accuracy': v, **({'tfidf/accuracy': 0.6364} if run == 'sentiment_scratch' else {})})
  write_run(tmp_path, 'digits_simclr', {'probe_test/accuracy': 0.9519, 'probe_250/accuracy': 0.9148,
                                        'svm_250/accuracy': 0.9333, 'fewshot/5shot': 0.8457})
  write_run(tmp_path, 'digits_random', {'probe_test/accuracy': 0.8926, 'probe_250/accuracy': 0.7593,
                                        'svm_250/accuracy': 0.7519, 'fewshot/5shot': 0.6198}, evaluate=True)
  write_run(tmp_path, 'minilm_features', {'linear_probe/accuracy': 0.6515, 'svm/accuracy': 0.6794}, evaluate=True)
  write_run(tmp_path, 'text_mlm', {'eval/accuracy': 0.3039})
  write_run(tmp_path, 'gpt_lm', {'eval/perplexity': 185.0127, 'eval/unigram_perplexity': 844.2208})
  rows = report.write(str(tmp_path), cfg, {'digits_simclr': 72.0})

  assert [(r['task'], r['init'], r['value']) for r in cells(rows)] == [
      ('digits', 'scratch', 0.9259), ('digits', 'pretrained', 0.937), ('sentiment text', 'scratch', 0.554),
      ('sentiment text', 'pretrained', 0.6098), ('sentiment text, GPT', 'scratch', 0.5636),
      ('sentiment text, GPT', 'pretrained', 0.566)]
  assert all(set(r) == {'task', 'init', 'metric', 'value'} and r['metric'] == 'test_accuracy' for r in cells(rows))
  md = (tmp_path / 'report.md').read_text()
  shown = md.split('\n![')[0]                      # what the experiment prints
  assert shown.startswith('# Pretrained vs from scratch, same fine-tuning budget (test accuracy)\n\n'
                          '| task | metric | scratch | pretrained | pretrained - scratch |\n'
                          '|---|---|---|---|---|\n'
                          '| digits | test_accuracy | 0.9259 | 0.9370 | +1.1 points |\n'
                          '| sentiment text | test_accuracy | 0.5540 | 0.6098 | +5.6 points |\n'
                          '| sentiment text, GPT | test_accuracy | 0.5636 | 0.5660 | +0.2 points |\n\n')
  assert 'from one run per arm: no confidence interval' in shown
  assert '| digits: linear SVM on 250 labels, random-init features | 0.7519 |' in shown      # from evaluate.json
  assert '| sentiment: linear SVM on frozen MiniLM features, same 500 | 0.6794 |' in shown
  assert '| sentiment: TF-IDF + logistic regression, same 500 tweets | 0.6364 |' in shown
  assert '| GPT causal LM: validation perplexity | 185.0127 |' in shown
  assert 'No value' not in md
  assert '![training curves](curves.png)' in md and '![comparison](comparison.png)' in md
  assert {label for _, label, _, _ in drawn['bars']} == {'scratch', 'pretrained'}
  assert drawn['bars'][0][0].get_ylabel() == 'test accuracy'
  assert {lb for _, lb, _ in drawn['lines']} == set(values)


def test_a_run_without_metrics_leaves_its_cell_empty(tmp_path, drawn):
  write_run(tmp_path, 'x_a', {'test/accuracy': 0.5})
  (tmp_path / 'x_b').mkdir()                             # started, never wrote a metric
  write_run(tmp_path, 'y_a', {'test/accuracy': 0.75})  # y_b: no directory at all
  cfg = dict(title='t', rows=[('x', 'a', 'x_a', 'test/accuracy'), ('x', 'b', 'x_b', 'test/accuracy'),
                              ('y', 'b', 'y_b', 'test/accuracy'), ('y', 'a', 'y_a', 'test/accuracy')],
             extras=[('missing extra', 'x_b', 'test/accuracy')], curves={'x': ['x_a', 'x_b']})
  rows = report.write(str(tmp_path), cfg)
  assert rows == [{'task': 'x', 'init': 'a', 'metric': 'test_accuracy', 'value': 0.5},
                  {'task': 'y', 'init': 'a', 'metric': 'test_accuracy', 'value': 0.75}]
  md = (tmp_path / 'report.md').read_text()
  t = table(md)
  assert '| task | metric | a | b |' in md       # the rows' variants in order; no baseline: no difference
  assert t['x']['a'] == '0.5000' and t['x']['b'] == '' and t['y']['b'] == ''
  assert 'No value for: x / b (x_b has no test/accuracy); y / b (y_b has no test/accuracy).' in md
  assert 'missing extra' not in md
  assert (tmp_path / 'comparison.png').exists() and (tmp_path / 'curves.png').exists()
  assert {label for _, label, _, _ in drawn['bars']} == {'a'}


@pytest.mark.parametrize('change, message', [
    (dict(rows=[('digits', 'lr_1e-5', 'r', 'test/accuracy')]),
     "report.rows: ('digits', 'lr_1e-5', 'r', 'test/accuracy') names variant 'lr_1e-5', not one of report.variants "
     "('lr_1e-3', 'lr_1e-4', 'lr_3e-4', 'lr_1e-2')"),
    (dict(baseline='lr_1'), "report.baseline='lr_1' is not one of report.variants ('lr_1e-3', 'lr_1e-4', 'lr_3e-4', "
                            "'lr_1e-2')"),
    (dict(rows=[('digits', 'lr_1e-3', 'r')]),
     "report.rows: ('digits', 'lr_1e-3', 'r') is not a (task, variant, run, metric key) tuple of 4 non-empty strings"),
    (dict(compare=('lr_1e-3',)), "report.compare: 'lr_1e-3' is not one of report.variants other than the baseline "
                                 "'lr_1e-3': ('lr_1e-4', 'lr_3e-4', 'lr_1e-2')"),
    (dict(baseline=None, compare=('lr_1e-4',)),
     "report.compare=('lr_1e-4',) needs report.baseline: differences are taken against it"),
    (dict(basline='lr_1e-3'), 'report: unknown key(s) '),
    (dict(rows=[('d', 'lr_1e-3', 'r', 'test/accuracy'), ('d', 'lr_1e-3', 's', 'test/accuracy')]),
     "is the second row for task 'd', variant 'lr_1e-3'"),
    (dict(rows=[('d', 'lr_1e-3', 'r', 'test/accuracy'), ('d', 'lr_1e-4', 's', 'test/loss')]), 'one metric per task'),
    (dict(difference='percent'), "report.difference='percent': one of ('value', 'points')"),
    (dict(curves={'digits': 'digits_lr_1e-3'}), "report.curves['digits'] must be a list of run names, got 'digits_lr"),
    (dict(rows={'digits': ('lr_1e-3', 'r', 'test/accuracy')}), 'report.rows must be a list of (task, variant, run, '),
])
def test_a_bad_report_config_is_one_user_error_line_before_anything_is_written(tmp_path, change, message):
  cfg = lr_config().to_dict()
  cfg.update(change)
  with pytest.raises(UserError) as e:
    report.write(str(tmp_path), cfg)
  assert message in str(e.value) and '\n' not in str(e.value)
  assert not list(tmp_path.iterdir())


def test_check_names_the_runs_an_experiment_lacks_before_any_is_trained():
  demo = demo_config()
  runs = list(demo.runs.keys())
  assert report.check(demo.report, runs=runs)['compare'] == ('pretrained',)
  with pytest.raises(UserError, match=r"report names runs the experiment does not define: \['digits_random'\]"):
    report.check(demo.report, runs=[r for r in runs if r != 'digits_random'])


def test_the_confidence_interval_is_students_t_interval():
  s = stats.summary([1.0, 2.0, 3.0, 4.0, 5.0])
  # mean 3, sample std sqrt(2.5), t(0.975, 4 dof) = 2.776445 from the tables: half-width 2.776445 * sqrt(0.5)
  assert s['n'] == 5 and s['mean'] == 3.0 and s['std'] == pytest.approx(1.5811388, abs=1e-6)
  assert s['ci'] == pytest.approx((3.0 - 1.9632, 3.0 + 1.9632), abs=1e-4)
  # mean 0.92333, std 0.025166, t(0.975, 2 dof) = 4.302653: half-width 0.062517
  assert stats.summary([0.9, 0.95, 0.92])['ci'] == pytest.approx((0.860816, 0.985850), abs=1e-5)
  assert stats.summary([0.5]) == {'n': 1, 'mean': 0.5, 'std': None, 'ci': None}


def test_paired_differences_of_identical_arms_include_zero_and_a_real_gap_excludes_it():
  rng = np.random.default_rng(0)
  a = {k: float(v) for k, v in enumerate(rng.normal(0.8, 0.05, 5))}
  same = stats.paired(a, dict(a))
  assert same['mean'] == 0.0 and same['ci'][0] <= 0.0 <= same['ci'][1] and not same['excludes_zero']
  noise = {k: v + float(rng.normal(0, 0.01)) for k, v in a.items()}     # the same arm, other seed noise
  d = stats.paired(noise, a)
  assert d['ci'][0] < 0 < d['ci'][1] and not d['excludes_zero']
  better = {k: v + 0.05 + float(rng.normal(0, 0.01)) for k, v in a.items()}
  d = stats.paired(better, a)
  assert d['excludes_zero'] and d['ci'][0] > 0 and d['seeds'] == [0, 1, 2, 3, 4]
  assert stats.paired({0: 1.0, 7: 2.0}, {7: 1.5, 9: 0.0}) == {'n': 1, 'mean': 0.5, 'std': None, 'ci': None,
                                                                'seeds': [7], 'excludes_zero': False}


def test_steps_to_target_is_the_first_evaluation_at_or_above_it():
  rows = [{'step': 0, 'train/loss': 2.0}, {'step': 10, 'eval/accuracy': 0.5}, {'step': 20, 'eval/accuracy': 0.8},
          {'step': 25, 'train/loss': 0.5}, {'step': 30, 'eval/accuracy': 0.7}, {'step': 40, 'eval/accuracy': 0.9}]
  assert stats.steps_to_target(rows, 'eval/accuracy', 0.8) == 20
  assert stats.steps_to_target(rows, 'eval/accuracy', 0.85) == 40
  assert stats.steps_to_target(rows, 'eval/accuracy', 0.5) == 10
  assert stats.steps_to_target(rows, 'eval/accuracy', 0.95) is None
  assert stats.steps_to_target(list(reversed(rows)), 'eval/accuracy', 0.75) == 20


def seeded_run(workdir, name, seed, test, curve, seconds=None):
  d = workdir / name / f's{seed}'
  d.mkdir(parents=True)
  rows = [{'step': s, 'train/loss': 2.0 / (1 + s), 'eval/accuracy': a} for s, a in curve]
  rows[-1]['test/accuracy'] = test
  (d / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  if seconds:
    (d / 'timing.json').write_text(json.dumps({'seconds': seconds, 'finished': True}))


def test_a_seeded_report_gives_means_intervals_paired_differences_and_steps_to_target(tmp_path, drawn):
  # scratch reaches 0.6 / 0.7 / 0.8 at step 40; pretrained gets there sooner and ends higher on every seed.
  scratch = {0: (0.80, [(10, 0.3), (20, 0.5), (30, 0.6), (40, 0.6)]),
             1: (0.82, [(10, 0.2), (20, 0.4), (30, 0.6), (40, 0.7)]),
             2: (0.84, [(10, 0.3), (20, 0.6), (30, 0.7), (40, 0.8)])}
  pretrained = {0: (0.90, [(10, 0.7), (20, 0.8), (30, 0.8), (40, 0.9)]),
                1: (0.91, [(10, 0.5), (20, 0.7), (30, 0.9), (40, 0.9)]),
                2: (0.95, [(10, 0.6), (20, 0.6), (30, 0.6), (40, 0.6)])}
  for k in (0, 1, 2):
    seeded_run(tmp_path, 'sc', k, *scratch[k], seconds=80.0)
    seeded_run(tmp_path, 'pt', k, *pretrained[k], seconds=40.0)
  write_run(tmp_path, 'probe', {'probe/accuracy': 0.75})
  cfg = dict(title='t', variants=('scratch', 'pretrained'), baseline='scratch', difference='points',
             rows=[('digits', 'scratch', 'sc', 'test/accuracy'), ('digits', 'pretrained', 'pt', 'test/accuracy')],
             extras=[('probe', 'probe', 'probe/accuracy'), ('seeded extra', 'pt', 'test/accuracy')],
             curves={'digits': ['sc', 'pt']}, eval_key='eval/accuracy')
  rows = report.write(str(tmp_path), cfg, {'sc': 240.0, 'pt': 120.0}, seeds={'sc': (0, 1, 2), 'pt': (0, 1, 2)})

  assert json.loads((tmp_path / 'report.json').read_text()) == rows
  assert [(r['init'], r['seed'], r['value']) for r in cells(rows)] == (
      [('scratch', k, scratch[k][0]) for k in (0, 1, 2)] + [('pretrained', k, pretrained[k][0]) for k in (0, 1, 2)])
  agg = {(r['init'], r['aggregate']): r for r in rows if 'aggregate' in r}
  # scratch 0.80 / 0.82 / 0.84: mean 0.82, std 0.02, half-width 4.302653 * 0.02 / sqrt(3) = 0.049683
  assert agg[('scratch', 'mean')]['value'] == pytest.approx(0.82) and agg[('scratch', 'mean')]['std'] == pytest.approx(0.02)
  assert agg[('scratch', 'mean')]['ci95'] == pytest.approx([0.82 - 0.049683, 0.82 + 0.049683], abs=1e-5)
  d = agg[('pretrained - scratch', 'paired_difference')]       # differences 0.10, 0.09, 0.11
  assert d['value'] == pytest.approx(0.10) and d['n'] == 3 and d['excludes_zero']
  assert d['ci95'] == pytest.approx([0.10 - 0.024841, 0.10 + 0.024841], abs=1e-5)
  # Target: scratch's final validation mean, (0.6 + 0.7 + 0.8) / 3 = 0.7.
  sc, pt = agg[('scratch', 'steps_to_target')], agg[('pretrained', 'steps_to_target')]
  assert sc['target'] == pytest.approx(0.7) and pt['target'] == pytest.approx(0.7)
  assert [p['step'] for p in sc['per_seed']] == [None, 40, 30] and sc['reached'] == 2 and sc['value'] == 35
  assert [p['step'] for p in pt['per_seed']] == [10, 20, None] and pt['reached'] == 2 and pt['value'] == 15
  assert [p['seconds'] for p in pt['per_seed']] == [10.0, 20.0, None]        # 40 s for 40 steps
  assert pt['speedup'] == pytest.approx(40 / 20) and pt['speedup_std'] is None     # only seed 1 has both

  md = (tmp_path / 'report.md').read_text()
  t = table(md)
  assert t['digits']['scratch'] == '0.8200 ± 0.0200 [0.7703, 0.8697]'
  assert t['digits']['pretrained - scratch'] == '**+10.0 points [+7.5, +12.5]**'
  assert ('digits: pretrained - scratch = +10.0 points (95% CI +7.5 points to +12.5 points, 3 paired seeds): the '
          'interval excludes 0') in md
  assert '| digits | 0.7000 | pretrained | 15 ± 7 | 2 of 3 | 15 | 2.00x |' in md
  assert '| digits | 0.7000 | scratch | 35 ± 7 | 2 of 3 | 70 |  |' in md
  assert '| probe | 0.7500 |' in md and '| seeded extra | 0.9200 ± 0.0265 [' in md
  assert 'Run times: sc 240 s (3 seeds), pt 120 s (3 seeds) (total 360 s).' in md
  # Bars at the means, each seed a dot; curves: the mean over seeds, with a band.
  assert sorted(round(h, 4) for _, _, _, h in drawn['bars']) == [0.82, 0.92]
  evals = {lb: ys for ax, lb, ys in drawn['lines'] if 'eval' in ax.get_title()}
  assert evals['sc'] == pytest.approx([0.8 / 3, 1.5 / 3, 1.9 / 3, 0.7])


def test_identical_arms_over_seeds_are_reported_as_indistinguishable(tmp_path, drawn):
  for k, v in enumerate((0.8, 0.85, 0.83)):
    seeded_run(tmp_path, 'a', k, v, [(10, v)])
    seeded_run(tmp_path, 'b', k, v + (0.01 if k == 1 else -0.01 if k == 2 else 0.0), [(10, v)])
  cfg = dict(title='t', baseline='a', rows=[('x', 'a', 'a', 'test/accuracy'), ('x', 'b', 'b', 'test/accuracy')],
             sweep=[('x', 'g', 50)], sweep_label='labels')
  report.write(str(tmp_path), cfg, seeds={'a': (0, 1, 2), 'b': (0, 1, 2)})
  md = (tmp_path / 'report.md').read_text()
  assert 'the interval includes 0, so these seeds cannot tell the two apart' in md
  assert '**' not in table(md)['x']['b - a'] and (tmp_path / 'sweep.png').stat().st_size > 0
