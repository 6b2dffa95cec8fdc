"""An experiment's report, written into its workdir from the runs' metrics.jsonl (or evaluate.json) files.

The experiment's `report` config says what to compare; nothing here knows any particular experiment:

  c.report = ConfigDict(dict(
      title='Pretrained vs from scratch',            # report.md's heading and comparison.png's title
      variants=('scratch', 'pretrained', 'minilm'),   # the table's columns, in order (default: the rows' variants
                                                      #   in first-appearance order)
      baseline='scratch',                            # optional: differences are taken against this variant
      compare=('pretrained',),                       # optional: one 'pretrained - scratch' column per variant
                                                      #   named here (default: every variant but the baseline)
      difference='points',                           # 'value' (default): +0.0123; 'points': 100 x, '+1.2 points'
      rows=[(task, variant, run, metric key), ...],  # one table cell each: the run's last value of the key
      extras=[(label, run, metric key), ...],        # optional: a 'for reference' table
      curves={task: [run, ...]},                     # optional: curves.png, one column per task
      eval_key='eval/accuracy',                      # optional: curves.png's second row (the first: train/loss)
      metric_label='test accuracy',                  # optional: comparison.png's y label (default: the metric key)
      notes='...'))                                  # optional: text under the tables

Writes report.json (a list of {"task", "init", "metric", "value"} rows, one per cell that has a value; `init` is
the row's variant: the key keeps its first name because readers of report.json use it), report.md (the table,
its differences, the extras, run times, the plots), curves.png and comparison.png (the cells as bars). A row
whose variant is not a column, a baseline that is not one, a misspelt key: a UserError before anything is read.
"""
import json
import os

from ftjax.errors import UserError

KEYS = ('title', 'variants', 'baseline', 'compare', 'difference', 'rows', 'extras', 'curves', 'eval_key',
        'metric_label', 'notes')
DIFFERENCES = ('value', 'points')
LOSS_KEY = 'train/loss'


def read_metrics(run_dir: str) -> list[dict]:
  path = os.path.join(run_dir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def last(rows: list[dict], key: str):
  vals = [r[key] for r in rows if key in r]
  return vals[-1] if vals else None


def _value(workdir, run, key):
  v = last(read_metrics(os.path.join(workdir, run)), key)
  if v is None and os.path.exists(os.path.join(workdir, run, 'evaluate.json')):
    with open(os.path.join(workdir, run, 'evaluate.json')) as f:
      v = json.load(f)['metrics'].get(key)
  return v


def _tuples(cfg, key, n, what):
  items = cfg.get(key) or ()
  if not isinstance(items, (list, tuple)):
    raise UserError(f'report.{key} must be a list of ({what}) tuples, got a {type(items).__name__}')
  for item in items:
    if not isinstance(item, (list, tuple)) or len(item) != n or not all(isinstance(x, str) and x for x in item):
      raise UserError(f'report.{key}: {item!r} is not a ({what}) tuple of {n} non-empty strings')
  return [tuple(item) for item in items]


def _names(cfg, key):
  names = cfg.get(key)
  if names is None:
    return None
  if isinstance(names, str) or not isinstance(names, (list, tuple)) or not all(isinstance(x, str) for x in names):
    raise UserError(f'report.{key} must be a tuple of variant names, got {names!r}')
  if len(set(names)) != len(names):
    raise UserError(f'report.{key} names a variant twice: {tuple(names)}')
  return tuple(names)


def check(cfg, runs=None) -> dict:
  """The report config, validated before any run is read (and, given the experiment's `runs`, before any is
  trained), so that a typo costs one line, not a silently thinner report. Returns it normalised: variants,
  compare and baseline resolved, rows/extras as tuples, curves as a dict."""
  if not (hasattr(cfg, 'keys') and hasattr(cfg, 'get')):
    raise UserError(f'report must be a ConfigDict or dict, got {type(cfg).__name__}')
  unknown = sorted(set(cfg.keys()) - set(KEYS))
  if unknown:
    raise UserError(f'report: unknown key(s) {unknown}; known: {", ".join(KEYS)}')
  rows = _tuples(cfg, 'rows', 4, 'task, variant, run, metric key')
  if not rows:
    raise UserError('report.rows is empty: nothing to compare')
  extras = _tuples(cfg, 'extras', 3, 'label, run, metric key')
  variants = _names(cfg, 'variants') or tuple(dict.fromkeys(v for _, v, _, _ in rows))
  seen, metrics = set(), {}
  for row in rows:
    task, variant, _, key = row
    if variant not in variants:
      raise UserError(f'report.rows: {row!r} names variant {variant!r}, not one of report.variants {variants}')
    if (task, variant) in seen:
      raise UserError(f'report.rows: {row!r} is the second row for task {task!r}, variant {variant!r}')
    seen.add((task, variant))
    if metrics.setdefault(task, key) != key:
      raise UserError(f'report.rows: {row!r} reads {key!r} but task {task!r} compares {metrics[task]!r}: '
                      'one metric per task')
  baseline = cfg.get('baseline')
  if baseline is not None and baseline not in variants:
    raise UserError(f'report.baseline={baseline!r} is not one of report.variants {variants}')
  compare = _names(cfg, 'compare')
  if compare is not None and baseline is None:
    raise UserError(f'report.compare={compare} needs report.baseline: differences are taken against it')
  if baseline is None:
    compare = ()
  elif compare is None:
    compare = tuple(v for v in variants if v != baseline)
  for v in compare:
    if v not in variants or v == baseline:
      raise UserError(f'report.compare: {v!r} is not one of report.variants other than the baseline '
                      f'{baseline!r}: {tuple(x for x in variants if x != baseline)}')
  difference = cfg.get('difference') or 'value'
  if difference not in DIFFERENCES:
    raise UserError(f'report.difference={difference!r}: one of {DIFFERENCES}')
  curves = cfg.get('curves') or {}
  if not hasattr(curves, 'items'):
    raise UserError(f'report.curves must map a task to a list of run names, got a {type(curves).__name__}')
  curves = dict(curves)
  for task, rs in curves.items():
    if not isinstance(rs, (list, tuple)) or not all(isinstance(r, str) for r in rs):
      raise UserError(f'report.curves[{task!r}] must be a list of run names, got {rs!r}')
  curves = {task: list(rs) for task, rs in curves.items()}
  if runs is not None:
    named = [r for _, _, r, _ in rows] + [r for _, r, _ in extras] + [r for rs in curves.values() for r in rs]
    missing = sorted(set(named) - set(runs))
    if missing:
      raise UserError(f'report names runs the experiment does not define: {missing}')
  for key in ('title', 'eval_key', 'metric_label', 'notes'):
    if cfg.get(key) is not None and not isinstance(cfg.get(key), str):
      raise UserError(f'report.{key} must be a string, got {cfg.get(key)!r}')
  return dict(title=cfg.get('title') or 'Report', variants=variants, baseline=baseline, compare=compare,
              difference=difference, rows=rows, extras=extras, curves=curves, eval_key=cfg.get('eval_key'),
              metric_label=cfg.get('metric_label'), notes=cfg.get('notes') or '')


def _difference(d, how):
  return f'{100 * d:+.1f} points' if how == 'points' else f'{d:+.4f}'


def write(workdir: str, cfg, seconds: dict | None = None) -> list[dict]:
  """cfg: the experiment's `report` config (module docstring). Returns the report.json rows."""
  c = check(cfg)
  rows, missing = [], []
  for task, variant, run, key in c['rows']:
    v = _value(workdir, run, key)
    if v is None:
      missing.append(f'{task} / {variant} ({run} has no {key})')
    else:
      rows.append({'task': task, 'init': variant, 'metric': key.replace('/', '_'), 'value': float(v)})
  with open(os.path.join(workdir, 'report.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  _plots(workdir, c, rows)

  variants, baseline = c['variants'], c['baseline']
  tasks = {task: key.replace('/', '_') for task, _, _, key in c['rows']}     # one metric per task (check)
  table = {(r['task'], r['init']): r['value'] for r in rows}
  heads = list(variants) + [f'{v} - {baseline}' for v in c['compare']]
  md = [f'# {c["title"]}', '', '| task | metric | ' + ' | '.join(heads) + ' |', '|---|---|' + '---|' * len(heads)]
  for t, metric in tasks.items():
    cells = [f'{table[(t, v)]:.4f}' if (t, v) in table else '' for v in variants]
    cells += [_difference(table[(t, v)] - table[(t, baseline)], c['difference'])
              if (t, v) in table and (t, baseline) in table else '' for v in c['compare']]
    md.append(f'| {t} | {metric} | ' + ' | '.join(cells) + ' |')
  if missing:
    md += ['', 'No value for: ' + '; '.join(missing) + '.']
  extras = [(label, _value(workdir, run, key)) for label, run, key in c['extras']]
  if extras:
    md += ['', '| for reference | value |', '|---|---|']
    md += [f'| {label} | {v:.4f} |' for label, v in extras if v is not None]
  if seconds:
    md += ['', 'Run times: ' + ', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())
           + f' (total {sum(seconds.values()):.0f} s).']
  md += ['', c['notes'], '']
  if c['curves']:
    md += ['![training curves](curves.png)', '']
  md += ['![comparison](comparison.png)', '']
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write('\n'.join(md))
  return rows


def _plots(workdir, c, rows):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  curves = c['curves']
  if curves:
    keys = [LOSS_KEY] + ([c['eval_key']] if c['eval_key'] else [])
    fig, axes = plt.subplots(len(keys), len(curves), figsize=(5 * len(curves), 3.5 * len(keys)), squeeze=False)
    for j, (task, runs) in enumerate(curves.items()):
      for run in runs:
        m = read_metrics(os.path.join(workdir, run))
        for i, key in enumerate(keys):
          pts = [(r['step'], r[key]) for r in m if key in r]
          if pts:
            axes[i, j].plot(*zip(*pts), marker='.' if i else None, label=run)
      for i, key in enumerate(keys):
        axes[i, j].set_title(f'{task}: ' + ('training loss' if key == LOSS_KEY else key))
      for ax in axes[:, j]:
        ax.set_xlabel('step')
        if ax.get_legend_handles_labels()[0]:
          ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, 'curves.png'), dpi=100)
    plt.close(fig)

  # Every configured task and variant keeps its slot (and colour), whatever is missing.
  tasks = list(dict.fromkeys(task for task, _, _, _ in c['rows']))
  variants = c['variants']
  table = {(r['task'], r['init']): r['value'] for r in rows}
  fig, ax = plt.subplots(figsize=(2.5 + len(tasks) * max(2.0, 0.6 * len(variants)), 4))
  width = 0.8 / len(variants)
  unit = all(0.0 <= v <= 1.0 for v in table.values())
  for k, variant in enumerate(variants):
    xs = [i for i, t in enumerate(tasks) if (t, variant) in table]
    if xs:
      bars = ax.bar([x + (k - (len(variants) - 1) / 2) * width for x in xs], [table[(tasks[i], variant)] for i in xs],
                    width, label=variant, color=f'C{k % 10}')
      ax.bar_label(bars, fmt='%.3f' if unit else '%.4g', fontsize=8)
  ax.set_xticks(range(len(tasks)), tasks)
  metrics = list(dict.fromkeys(key for _, _, _, key in c['rows']))
  ax.set_ylabel(c['metric_label'] or (metrics[0] if len(metrics) == 1 else 'value'))
  if unit:
    ax.set_ylim(0, 1.05)
  if table:
    ax.legend()
  ax.set_title(c['title'])
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'comparison.png'), dpi=100)
  plt.close(fig)
