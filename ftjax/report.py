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
      notes='...',                                   # optional: text under the tables
      sweep=[(task, group, x), ...],                 # optional: sweep.png, the metric against x (log scale), a
                                                     #   line per variant, a panel per group (label efficiency)
      sweep_label='labelled examples'))              # optional: sweep.png's x label

Runs repeated over seeds (the experiment's `seeds`; their metrics in <run>/s<k>) give each cell a mean ± std and
a 95% t-interval, each difference a paired (same seed) mean and interval, bold where it excludes 0, and a
sentence per difference saying whether the seeds can tell the arms apart. With a baseline and an eval_key, the
cost to reach a target: the first evaluation step at which each arm's validation metric reaches the baseline's
final mean, and the speed-up over the baseline, paired by seed.

Writes report.json (a list of {"task", "init", "metric", "value"} rows, one per cell and seed that has a value,
with "seed" for a seeded run; `init` is the row's variant: the key keeps its first name because readers of
report.json use it; then rows with an "aggregate" field: 'mean', 'paired_difference', 'steps_to_target'), report.md (the table,
its differences, the extras, run times, the plots), curves.png and comparison.png (the cells as bars). A row
whose variant is not a column, a baseline that is not one, a misspelt key: a UserError before anything is read.
"""
import json
import os

import numpy as np

from ftjax import stats
from ftjax.errors import UserError

KEYS = ('title', 'variants', 'baseline', 'compare', 'difference', 'rows', 'extras', 'curves', 'eval_key',
        'metric_label', 'notes', 'sweep', 'sweep_label')
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
  sweep = list(cfg.get('sweep') or ())
  tasks = {t for t, _, _, _ in rows}
  for item in sweep:
    if (not isinstance(item, (list, tuple)) or len(item) != 3 or item[0] not in tasks
        or not isinstance(item[2], (int, float)) or item[2] <= 0):
      raise UserError(f'report.sweep: {item!r} is not a (task of report.rows, group, x > 0) tuple')
  for key in ('title', 'eval_key', 'metric_label', 'notes', 'sweep_label'):
    if cfg.get(key) is not None and not isinstance(cfg.get(key), str):
      raise UserError(f'report.{key} must be a string, got {cfg.get(key)!r}')
  return dict(title=cfg.get('title') or 'Report', variants=variants, baseline=baseline, compare=compare,
              difference=difference, rows=rows, extras=extras, curves=curves, eval_key=cfg.get('eval_key'),
              metric_label=cfg.get('metric_label'), notes=cfg.get('notes') or '',
              sweep=[tuple(x) for x in sweep], sweep_label=cfg.get('sweep_label'))


def _difference(d, how):
  return f'{100 * d:+.1f} points' if how == 'points' else f'{d:+.4f}'


def run_dir(run, seed=None) -> str:
  """A run's directory relative to the workdir: <run>, or <run>/s<seed> for one seed of a seeded run."""
  return run if seed is None else f'{run}/s{seed}'


def run_dirs(run, seeds) -> list:
  """[(seed or None, run_dir)] of a run; seeds: {run: its seeds} for the seeded runs."""
  return [(k, run_dir(run, k)) for k in seeds.get(run, (None,))]


def timing(workdir, rel):
  """A run's wall seconds over the invocations that worked on it (timing.json, ftjax/experiment.py), or None."""
  path = os.path.join(workdir, rel, 'timing.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)['seconds']


def _cell(s):
  """A table cell: the value, or mean ± std [95% CI] over seeds."""
  if s['n'] < 2:
    return f'{s["mean"]:.4f}'
  return f'{s["mean"]:.4f} ± {s["std"]:.4f} [{s["ci"][0]:.4f}, {s["ci"][1]:.4f}]'


def _diff_cell(d, how):
  if d['n'] < 2:
    return _difference(d['mean'], how)
  text = f'{_difference(d["mean"], how)} [{_difference(d["ci"][0], how).split()[0]}, {_difference(d["ci"][1], how).split()[0]}]'
  return f'**{text}**' if d['excludes_zero'] else text


def _targets(workdir, c, seeds, runs):
  """Cost to reach a target: per task, the first evaluation step at which each variant's validation metric
  (eval_key) reaches the baseline's final mean; speed-ups paired by seed. [] without baseline or eval_key."""
  key, baseline, out = c['eval_key'], c['baseline'], []
  if not (key and baseline):
    return out
  for task in dict.fromkeys(t for t, _, _, _ in c['rows']):
    if (task, baseline) not in runs:
      continue
    metrics = {v: {k: read_metrics(os.path.join(workdir, rel)) for k, rel in run_dirs(r, seeds)}
               for (t, v), r in runs.items() if t == task}
    finals = [last(m, key) for m in metrics[baseline].values()]
    finals = [f for f in finals if f is not None]
    if not finals:
      continue
    target = float(np.mean(finals))
    steps = {v: {k: stats.steps_to_target(m, key, target) for k, m in ms.items()} for v, ms in metrics.items()}
    for v in c['variants']:
      if v not in steps:
        continue
      per_seed = []
      for k, rel in run_dirs(runs[(task, v)], seeds):
        s, t, m = steps[v][k], timing(workdir, rel), metrics[v][k]
        total = max((r['step'] for r in m), default=0)
        per_seed.append({'seed': k, 'step': s, 'seconds': s * t / total if s is not None and t and total else None,
                         'of_steps': total})
      reached = [p['step'] for p in per_seed if p['step'] is not None]
      secs = [p['seconds'] for p in per_seed if p['seconds'] is not None]
      ratios = [steps[baseline][k] / s for k, s in steps[v].items()
                if s and steps[baseline].get(k) is not None] if v != baseline else []
      out.append({'task': task, 'init': v, 'metric': key.replace('/', '_'), 'aggregate': 'steps_to_target',
                  'target': target, 'per_seed': per_seed, 'reached': len(reached), 'n': len(per_seed),
                  'value': float(np.mean(reached)) if reached else None,
                  'std': float(np.std(reached, ddof=1)) if len(reached) > 1 else None,
                  'seconds': float(np.mean(secs)) if secs else None,
                  'speedup': float(np.mean(ratios)) if ratios else None,
                  'speedup_std': float(np.std(ratios, ddof=1)) if len(ratios) > 1 else None})
  return out


def _sentences(c, diffs, targets):
  """One plain sentence per task and compared variant, generated from the numbers."""
  out, how = [], c['difference']
  for (task, v), d in diffs.items():
    head = f'{task}: {v} - {c["baseline"]} = {_difference(d["mean"], how)}'
    if d['n'] < 2:
      out.append(f'- {head} from one run per arm: no confidence interval, and a difference of this size can be seed noise.')
    else:
      verdict = ('excludes 0, so the difference is larger than seed noise' if d['excludes_zero'] else
                 'includes 0, so these seeds cannot tell the two apart')
      out.append(f'- {head} (95% CI {_difference(d["ci"][0], how)} to {_difference(d["ci"][1], how)}, {d["n"]} '
                 f'paired seeds): the interval {verdict}.')
    for t in targets:
      if t['task'] == task and t['init'] == v:
        if not t['reached']:
          out.append(f'  It never reached the {c["baseline"]} arm\'s final validation value ({t["target"]:.4f}).')
        elif t['speedup']:
          out.append(f'  It reached the {c["baseline"]} arm\'s final validation value ({t["target"]:.4f}) in '
                     f'{t["value"]:.0f} steps on average ({t["reached"]} of {t["n"]} runs reached it); paired by seed, '
                     + (f'{t["speedup"]:.1f}x fewer' if t['speedup'] >= 1 else f'{1 / t["speedup"]:.1f}x more')
                     + f' steps than the {c["baseline"]} arm.')
  return out


def write(workdir: str, cfg, seconds: dict | None = None, seeds: dict | None = None) -> list[dict]:
  """cfg: the experiment's `report` config (module docstring); seconds: {run: wall seconds} for the run-times
  line; seeds: {run: its seeds} for the runs repeated per seed (in <run>/s<k>). Returns the report.json rows."""
  c = check(cfg)
  seeds = dict(seeds or {})
  variants, baseline = c['variants'], c['baseline']
  tasks = {task: key.replace('/', '_') for task, _, _, key in c['rows']}     # one metric per task (check)
  rows, missing, cells, runs = [], [], {}, {}
  for task, variant, run, key in c['rows']:
    runs[(task, variant)] = run
    vals = {}
    for k, rel in run_dirs(run, seeds):
      v = _value(workdir, rel, key)
      if v is not None:
        vals[k] = float(v)
        rows.append({'task': task, 'init': variant, 'metric': key.replace('/', '_'), 'value': float(v),
                     **({} if k is None else {'seed': k})})
    if vals:
      cells[(task, variant)] = vals
    else:
      missing.append(f'{task} / {variant} ({run} has no {key})')
  summaries = {tv: stats.summary(vals.values()) for tv, vals in cells.items()}
  for (task, variant), s in summaries.items():
    if runs[(task, variant)] in seeds:
      rows.append({'task': task, 'init': variant, 'metric': tasks[task], 'aggregate': 'mean',
                   'value': s['mean'], 'std': s['std'], 'n': s['n'], 'ci95': s['ci'] and list(s['ci'])})
  diffs = {}
  for t in tasks:
    for v in c['compare']:
      if (t, v) in cells and (t, baseline) in cells:
        d = stats.paired(cells[(t, v)], cells[(t, baseline)])
        if d is not None:
          diffs[(t, v)] = d
          if d['n'] > 1:
            rows.append({'task': t, 'init': f'{v} - {baseline}', 'metric': tasks[t], 'aggregate': 'paired_difference',
                         'value': d['mean'], 'std': d['std'], 'n': d['n'], 'ci95': list(d['ci']),
                         'excludes_zero': d['excludes_zero']})
  targets = _targets(workdir, c, seeds, runs)
  rows += targets
  with open(os.path.join(workdir, 'report.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  _plots(workdir, c, cells, summaries, seeds)

  heads = list(variants) + [f'{v} - {baseline}' for v in c['compare']]
  md = [f'# {c["title"]}', '', '| task | metric | ' + ' | '.join(heads) + ' |', '|---|---|' + '---|' * len(heads)]
  for t, metric in tasks.items():
    row = [_cell(summaries[(t, v)]) if (t, v) in summaries else '' for v in variants]
    row += [_diff_cell(diffs[(t, v)], c['difference']) if (t, v) in diffs else '' for v in c['compare']]
    md.append(f'| {t} | {metric} | ' + ' | '.join(row) + ' |')
  if any(s['n'] > 1 for s in summaries.values()):
    md += ['', 'Cells: mean ± standard deviation over seeds [95% t-interval of the mean]. Differences: paired by '
           'seed, mean [95% t-interval]; in bold where the interval excludes 0.']
  if missing:
    md += ['', 'No value for: ' + '; '.join(missing) + '.']
  if diffs:
    md += [''] + _sentences(c, diffs, targets)
  if targets:
    md += ['', f'Cost to reach the target (the {baseline} arm\'s final mean of {c["eval_key"]}, on the validation '
           'split): the first evaluation step at or above it; seconds at the run\'s average pace (compilation and '
           'evaluations included); speed-up = the baseline\'s steps / the variant\'s, paired by seed.', '',
           '| task | target | variant | steps to target | reached | seconds | speed-up |', '|---|---|---|---|---|---|---|']
    for t in targets:
      steps = ('never' if t['value'] is None else f'{t["value"]:.0f}' + (f' ± {t["std"]:.0f}' if t['std'] is not None
                                                                           else ''))
      speed = '' if t['speedup'] is None else f'{t["speedup"]:.2f}x' + (
          f' ± {t["speedup_std"]:.2f}' if t['speedup_std'] is not None else '')
      md.append(f'| {t["task"]} | {t["target"]:.4f} | {t["init"]} | {steps} | {t["reached"]} of {t["n"]} | '
                + ('' if t['seconds'] is None else f'{t["seconds"]:.0f}') + f' | {speed} |')
  extras = []
  for label, run, key in c['extras']:
    vals = [v for _, rel in run_dirs(run, seeds) if (v := _value(workdir, rel, key)) is not None]
    if vals:      # a value every seed gives alike (a baseline that ignores the seed) is shown once
      extras.append((label, _cell(stats.summary(vals)) if len(set(vals)) > 1 else f'{vals[0]:.4f}'))
  if extras:
    md += ['', '| for reference | value |', '|---|---|'] + [f'| {label} | {v} |' for label, v in extras]
  if seconds:
    md += ['', 'Run times: ' + ', '.join(f'{k} {v:.0f} s' + (f' ({len(seeds[k])} seeds)' if k in seeds else '')
                                         for k, v in seconds.items()) + f' (total {sum(seconds.values()):.0f} s).']
  md += ['', c['notes'], '']
  if c['curves']:
    md += ['![training curves](curves.png)', '']
  md += ['![comparison](comparison.png)', '']
  if c['sweep']:
    md += ['![sweep](sweep.png)', '']
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write('\n'.join(md))
  return rows


def _mean_curve(workdir, run, seeds, key):
  """(steps, mean, std or None) of `key` over a run's seeds, at the steps every seed logged."""
  curves = []
  for _, rel in run_dirs(run, seeds):
    pts = {r['step']: r[key] for r in read_metrics(os.path.join(workdir, rel)) if key in r}
    if pts:
      curves.append(pts)
  if not curves:
    return None
  steps = sorted(set.intersection(*(set(p) for p in curves)))
  vals = np.array([[p[s] for s in steps] for p in curves])
  return steps, vals.mean(0), (vals.std(0, ddof=1) if len(curves) > 1 else None)


def _plots(workdir, c, cells, summaries, seeds):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  curves = c['curves']
  if curves:
    keys = [LOSS_KEY] + ([c['eval_key']] if c['eval_key'] else [])
    fig, axes = plt.subplots(len(keys), len(curves), figsize=(5 * len(curves), 3.5 * len(keys)), squeeze=False)
    for j, (task, runs) in enumerate(curves.items()):
      for n, run in enumerate(runs):
        for i, key in enumerate(keys):
          curve = _mean_curve(workdir, run, seeds, key)
          if curve:
            steps, mean, std = curve
            axes[i, j].plot(steps, list(mean), marker='.' if i else None, label=run, color=f'C{n % 10}')
            if std is not None:     # the spread over seeds
              axes[i, j].fill_between(steps, mean - std, mean + std, alpha=0.2, color=f'C{n % 10}')
      for i, key in enumerate(keys):
        axes[i, j].set_title(f'{task}: ' + ('training loss' if key == LOSS_KEY else key)
                             + (' (mean ± std over seeds)' if any(r in seeds for r in runs) else ''))
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
  fig, ax = plt.subplots(figsize=(2.5 + len(tasks) * max(2.0, 0.6 * len(variants)), 4))
  width = 0.8 / len(variants)
  unit = all(0.0 <= v <= 1.0 for vals in cells.values() for v in vals.values())
  for k, variant in enumerate(variants):
    xs = [i for i, t in enumerate(tasks) if (t, variant) in cells]
    if xs:
      pos = [x + (k - (len(variants) - 1) / 2) * width for x in xs]
      s = [summaries[(tasks[i], variant)] for i in xs]
      err = [[m['mean'] - m['ci'][0] if m['ci'] else 0 for m in s]] * 2     # the 95% interval of the mean
      bars = ax.bar(pos, [m['mean'] for m in s], width, label=variant, color=f'C{k % 10}',
                    yerr=err if any(m['ci'] for m in s) else None, capsize=3)
      ax.bar_label(bars, fmt='%.3f' if unit else '%.4g', fontsize=8)
      for p, i in zip(pos, xs):       # each seed's value
        vals = list(cells[(tasks[i], variant)].values())
        if len(vals) > 1:
          ax.scatter([p] * len(vals), vals, s=8, color='k', zorder=3)
  ax.set_xticks(range(len(tasks)), tasks)
  metrics = list(dict.fromkeys(key for _, _, _, key in c['rows']))
  ax.set_ylabel(c['metric_label'] or (metrics[0] if len(metrics) == 1 else 'value'))
  if unit:
    ax.set_ylim(0, 1.05)
  if cells:
    ax.legend()
  ax.set_title(c['title'] + (' (95% CI over seeds)' if any(s['n'] > 1 for s in summaries.values()) else ''))
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'comparison.png'), dpi=100)
  plt.close(fig)
  if c['sweep']:
    _sweep_plot(workdir, c, summaries)


def _sweep_plot(workdir, c, summaries):
  """sweep.png: the metric against the swept quantity (log x), a line per variant with its 95% CI band, a
  panel per group."""
  import matplotlib.pyplot as plt
  groups = list(dict.fromkeys(g for _, g, _ in c['sweep']))
  fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
  for j, group in enumerate(groups):
    ax = axes[0, j]
    for k, variant in enumerate(c['variants']):
      pts = sorted(((x, summaries[(task, variant)]) for task, g, x in c['sweep']
                    if g == group and (task, variant) in summaries), key=lambda p: p[0])
      if not pts:
        continue
      xs, ms = [p[0] for p in pts], [p[1] for p in pts]
      ax.plot(xs, [m['mean'] for m in ms], marker='o', label=variant, color=f'C{k % 10}')
      if all(m['ci'] for m in ms):
        ax.fill_between(xs, [m['ci'][0] for m in ms], [m['ci'][1] for m in ms], alpha=0.2, color=f'C{k % 10}')
    ax.set_xscale('log')
    ax.set_xlabel(c['sweep_label'] or 'x')
    ax.set_ylabel(c['metric_label'] or 'value')
    ax.set_title(group)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'sweep.png'), dpi=100)
  plt.close(fig)
