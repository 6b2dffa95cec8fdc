"""The report compares whatever variants the experiment names, against its baseline; none is dropped silently.

Fake run directories only (metrics.jsonl, evaluate.json): no training, no JAX.
"""
import importlib.util
import json
import os

import matplotlib
import matplotlib.axes
import pytest
from ml_collections import ConfigDict

from conftest import ROOT
from ftjax import report
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
  assert {(r['task'], r['init']): r['value'] for r in rows} == LR
  assert {(r['task'], r['metric']) for r in rows} == {('digits', 'test_accuracy'), ('stsb', 'test_pearson')}
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
  cfg = demo_config().report
  values = {'digits_scratch': 0.9259, 'digits_pretrained': 0.937, 'sentiment_scratch': 0.554,
            'sentiment_pretrained': 0.6098, 'sentiment_minilm': 0.7027}
  for run, v in values.items():
    write_run(tmp_path, run, {'test/accuracy': v, **({'tfidf/accuracy': 0.6364} if run == 'sentiment_scratch' else {})})
  write_run(tmp_path, 'digits_simclr', {'probe_test/accuracy': 0.9519, 'probe_250/accuracy': 0.9148,
                                        'fewshot/5shot': 0.8457})
  write_run(tmp_path, 'digits_random', {'probe_test/accuracy': 0.8926, 'probe_250/accuracy': 0.7593,
                                        'fewshot/5shot': 0.6198}, evaluate=True)
  write_run(tmp_path, 'text_mlm', {'eval/accuracy': 0.3039})
  rows = report.write(str(tmp_path), cfg, {'digits_simclr': 72.0})

  assert [(r['task'], r['init'], r['value']) for r in rows] == [
      ('digits', 'scratch', 0.9259), ('digits', 'pretrained', 0.937), ('sentiment text', 'scratch', 0.554),
      ('sentiment text', 'pretrained', 0.6098), ('sentiment text', 'minilm', 0.7027)]
  assert all(set(r) == {'task', 'init', 'metric', 'value'} and r['metric'] == 'test_accuracy' for r in rows)
  md = (tmp_path / 'report.md').read_text()
  shown = md.split('\n![')[0]                      # what the experiment prints
  assert shown.startswith('# Pretrained vs from scratch, same fine-tuning budget (test accuracy)\n\n'
                          '| task | metric | scratch | pretrained | minilm | pretrained - scratch |\n'
                          '|---|---|---|---|---|---|\n'
                          '| digits | test_accuracy | 0.9259 | 0.9370 |  | +1.1 points |\n'
                          '| sentiment text | test_accuracy | 0.5540 | 0.6098 | 0.7027 | +5.6 points |\n\n')
  assert '| digits: linear probe on random-init features (test) | 0.8926 |' in shown      # from evaluate.json
  assert '| sentiment: TF-IDF + logistic regression, same labelled tweets | 0.6364 |' in shown
  assert md.count('minilm') == 1 and 'No value' not in md
  assert '![training curves](curves.png)' in md and '![comparison](comparison.png)' in md
  assert {label for _, label, _, _ in drawn['bars']} == {'scratch', 'pretrained', 'minilm'}
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
