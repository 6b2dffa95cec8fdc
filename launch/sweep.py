"""Runs a grid or a list of config overrides, one run per workdir, and tabulates the results.

  python launch/sweep.py --config=configs/resnet_digits.py --workdir=runs/sweep \\
      --grid optim.lr=1e-3,3e-3 --grid model.width=0.125,0.25 [--parallel=2] [--metric=eval/accuracy]
  python launch/sweep.py ... --run 'optim.lr=1e-3 model.width=0.25' --run 'optim.lr=3e-3'

Each run is `python -m ftjax.main --config=... --workdir=<workdir>/<name> --config.<key>=<value> ...`;
a run that finished before (its result.json exists) is not started again. Writes <workdir>/sweep.csv
and <workdir>/sweep.md: final and best value of --metric per run, the best run marked.
"""
import argparse
import csv
import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', required=True)
  p.add_argument('--workdir', required=True)
  p.add_argument('--grid', action='append', default=[], help='key=v1,v2,...; several --grid: all combinations')
  p.add_argument('--run', action='append', default=[], help="'key=value key=value': one run (instead of --grid)")
  p.add_argument('--parallel', type=int, default=1, help='runs at once (processes on this machine)')
  p.add_argument('--metric', default='eval/accuracy')
  p.add_argument('--mode', choices=('max', 'min'), default='max')
  return p.parse_args(argv)


def runs_of(args) -> list[list[tuple[str, str]]]:
  if args.grid and args.run:
    sys.exit('sweep: give --grid or --run, not both')
  if args.run:
    return [[tuple(kv.split('=', 1)) for kv in r.split()] for r in args.run]
  axes = []
  for g in args.grid:
    if '=' not in g:
      sys.exit(f'sweep: --grid {g!r} is not key=v1,v2,...')
    key, values = g.split('=', 1)
    axes.append([(key, v) for v in values.split(',')])
  return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def name_of(overrides) -> str:
  return ','.join(f'{k.split(".")[-1]}={v}' for k, v in overrides) or 'default'


def metrics(run_dir, key, mode):
  from ftjax.report import read_metrics
  vals = [(r['step'], r[key]) for r in read_metrics(run_dir) if key in r]
  if not vals:
    return None, None, None
  best = (max if mode == 'max' else min)(vals, key=lambda sv: sv[1])
  return vals[-1][1], best[1], best[0]


def run_one(args, overrides):
  name = name_of(overrides)
  d = os.path.join(args.workdir, re.sub(r'[^\w.,=+-]', '_', name))
  done = os.path.join(d, 'result.json')
  if os.path.exists(done):
    print(f'sweep: {name}: finished before, skipped', flush=True)
    return json.load(open(done))
  cmd = [sys.executable, '-m', 'ftjax.main', f'--config={args.config}', f'--workdir={d}'] + [
      f'--config.{k}={v}' for k, v in overrides]
  print(f'sweep: {name}: started', flush=True)
  t = time.time()
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, 'sweep.log'), 'w') as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
  if rc:
    print(f'sweep: {name}: failed (exit {rc}); see {d}/sweep.log', flush=True)
    return {'name': name, 'workdir': d, 'status': f'failed ({rc})'}
  final, best, best_step = metrics(d, args.metric, args.mode)
  result = {'name': name, 'workdir': d, 'status': 'done', 'final': final, 'best': best, 'best_step': best_step,
            'seconds': round(time.time() - t, 1), **{k: v for k, v in overrides}}
  with open(done, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'sweep: {name}: {args.metric} final {final}, best {best} ({result["seconds"]} s)', flush=True)
  return result


def main(argv=None):
  args = parse_args(argv)
  runs = runs_of(args)
  os.makedirs(args.workdir, exist_ok=True)
  with ThreadPoolExecutor(max(1, args.parallel)) as pool:
    results = list(pool.map(lambda o: run_one(args, o), runs))
  keys = list(dict.fromkeys(k for o in runs for k, _ in o))
  ok = [r for r in results if r.get('best') is not None]
  winner = (max if args.mode == 'max' else min)(ok, key=lambda r: r['best'])['name'] if ok else None
  cols = ['name', *keys, 'status', 'final', 'best', 'best_step', 'seconds']
  with open(os.path.join(args.workdir, 'sweep.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, cols + ['is_best', 'workdir'], extrasaction='ignore')
    w.writeheader()
    for r in results:
      w.writerow({**r, 'is_best': r['name'] == winner})
  fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else ('' if v is None else str(v))
  lines = [f'| {" | ".join(cols)} |', '|' + '---|' * len(cols)]
  for r in results:
    star = r['name'] == winner
    cells = [fmt(r.get(c)) for c in cols]
    if star:
      cells[0] = f'**{cells[0]}** (best)'
      cells[cols.index('best')] = f'**{cells[cols.index("best")]}**'
    lines.append(f'| {" | ".join(cells)} |')
  table = f'Sweep of `{args.config}` by {args.metric} ({args.mode}):\n\n' + '\n'.join(lines) + '\n'
  with open(os.path.join(args.workdir, 'sweep.md'), 'w') as f:
    f.write(table)
  print(table, flush=True)
  return 1 if any(r['status'] != 'done' for r in results) else 0


if __name__ == '__main__':
  sys.exit(main())
