"""An experiment's report, written into its workdir from the runs' metrics.jsonl files:

report.json  a list of {"task", "init", "metric", "value"} rows (the comparison table, machine-readable)
report.md    that table with the differences, extra lines (baselines, probes), run times, the plots
curves.png   training loss and validation accuracy against step, one column per task
comparison.png  the final metric per task and initialisation, as bars
"""
import json
import os

INIT_ORDER = ('scratch', 'pretrained', 'minilm')


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


def write(workdir: str, cfg, seconds: dict | None = None) -> list[dict]:
  """cfg: title, rows [(task, init, run, metric key)], extras [(label, run, key)], curves
  {task: [runs]}, eval_key. Returns the report.json rows."""
  rows = []
  for task, init, run, key in cfg.rows:
    v = _value(workdir, run, key)
    if v is not None:
      rows.append({'task': task, 'init': init, 'metric': key.replace('/', '_'), 'value': float(v)})
  with open(os.path.join(workdir, 'report.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  _plots(workdir, cfg, rows)

  tasks = list(dict.fromkeys(r['task'] for r in rows))
  inits = [i for i in INIT_ORDER if any(r['init'] == i for r in rows)]
  table = {(r['task'], r['init']): r for r in rows}
  md = [f'# {cfg.title}', '', '| task | metric | ' + ' | '.join(inits) + ' | pretrained - scratch |',
        '|---|---|' + '---|' * (len(inits) + 1)]
  for t in tasks:
    metric = next(r['metric'] for r in rows if r['task'] == t)
    cells = [f'{table[(t, i)]["value"]:.4f}' if (t, i) in table else '' for i in inits]
    delta = ''
    if (t, 'pretrained') in table and (t, 'scratch') in table:
      delta = f'{100 * (table[(t, "pretrained")]["value"] - table[(t, "scratch")]["value"]):+.1f} points'
    md.append(f'| {t} | {metric} | ' + ' | '.join(cells) + f' | {delta} |')
  extras = [(label, _value(workdir, run, key)) for label, run, key in cfg.get('extras', [])]
  if extras:
    md += ['', '| for reference | value |', '|---|---|']
    md += [f'| {label} | {v:.4f} |' for label, v in extras if v is not None]
  if seconds:
    md += ['', 'Run times: ' + ', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())
           + f' (total {sum(seconds.values()):.0f} s).']
  md += ['', cfg.get('notes', ''), '', '![training curves](curves.png)', '', '![comparison](comparison.png)', '']
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write('\n'.join(md))
  return rows


def _plots(workdir, cfg, rows):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  curves = dict(cfg.curves)
  fig, axes = plt.subplots(2, len(curves), figsize=(5 * len(curves), 7), squeeze=False)
  for j, (task, runs) in enumerate(curves.items()):
    for run in runs:
      m = read_metrics(os.path.join(workdir, run))
      for i, key in enumerate(('train/loss', cfg.eval_key)):
        pts = [(r['step'], r[key]) for r in m if key in r]
        if pts:
          axes[i, j].plot(*zip(*pts), marker='.' if i else None, label=run)
    axes[0, j].set_title(f'{task}: training loss')
    axes[1, j].set_title(f'{task}: {cfg.eval_key}')
    for ax in axes[:, j]:
      ax.set_xlabel('step')
      ax.legend(fontsize=8)
      ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'curves.png'), dpi=100)
  plt.close(fig)

  tasks = list(dict.fromkeys(r['task'] for r in rows))
  fig, ax = plt.subplots(figsize=(2.5 + 2 * len(tasks), 4))
  width = 0.8 / len(INIT_ORDER)
  for k, init in enumerate(INIT_ORDER):
    xs = [i for i, t in enumerate(tasks) if any(r['task'] == t and r['init'] == init for r in rows)]
    vals = [next(r['value'] for r in rows if r['task'] == tasks[i] and r['init'] == init) for i in xs]
    if xs:
      bars = ax.bar([x + (k - 1) * width for x in xs], vals, width, label=init)
      ax.bar_label(bars, fmt='%.3f', fontsize=8)
  ax.set_xticks(range(len(tasks)), tasks)
  ax.set_ylabel('test accuracy')
  ax.set_ylim(0, 1.05)
  ax.legend()
  ax.set_title(cfg.title)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, 'comparison.png'), dpi=100)
  plt.close(fig)
