"""An experiment: several runs in order, each in its own sub-directory of the workdir, then a report.

A config with a `runs` field (name -> run config) is an experiment; `python -m ftjax.main` runs it.
Strings 'run:<name>' in a run's init.source, input.tokenizer or model.config point at an earlier
run's workdir. Runs in `evaluate_only` only evaluate their model (ftjax.evaluate). Every run resumes
or is skipped when finished, so rerunning after a preemption continues where it stopped.

Seeds: `seeds=(0, 1, 2)` repeats every run not named in `shared` once per seed, in `<name>/s<k>` with
config.seed = k (the fresh parameters' initialisation and the data order); a 'run:<name>' reference from
a seeded run to a seeded run reads the same seed's. The report then gives means, confidence intervals
and paired differences over the seeds (ftjax/report.py).
"""
import json
import os
import time

from ftjax import defaults, report, train
from ftjax.errors import UserError

REFERENCES = (('init', 'source'), ('input', 'tokenizer'), ('model', 'config'))


def seeded_runs(config) -> dict:
  """{run name: its seeds} for the runs repeated per seed (none without `seeds`)."""
  seeds, shared = tuple(config.get('seeds') or ()), tuple(config.get('shared') or ())
  if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in seeds) or len(set(seeds)) != len(seeds):
    raise UserError(f'seeds={seeds!r}: distinct non-negative integers, e.g. (0, 1, 2)')
  unknown = sorted(set(shared) - set(config.runs.keys()))
  if unknown:
    raise UserError(f'shared names runs the experiment does not define: {unknown}')
  return {name: seeds for name in config.runs.keys() if seeds and name not in shared}


def _instances(order, seeded):
  """[(run name, seed or None, sub-directory)] in run order: a seeded run's seeds one after another."""
  return [(name, k, rel) for name in order for k, rel in report.run_dirs(name, seeded)]


def _resolve(cfg, workdir, done, seed, seeded):
  cfg = cfg.copy_and_resolve_references()
  if seed is not None:
    cfg.seed = seed
  for section, key in REFERENCES:
    value = cfg[section].get(key)
    if isinstance(value, str) and value.startswith('run:'):
      name = value[4:]
      if name in seeded and seed is None:
        raise UserError(f'{section}.{key}={value!r}: a run shared by all seeds cannot read the seeded run {name!r}')
      sub = report.run_dir(name, seed if name in seeded else None)
      if sub not in done:
        raise UserError(f'{section}.{key}={value!r}: no earlier run named {name!r}')
      cfg[section][key] = os.path.join(workdir, sub)
  return cfg


def _add_time(sub_dir, seconds, finished):
  """Accumulates a run's wall time over the invocations that worked on it (timing.json, read by the
  report); a run already finished is not charged again."""
  os.makedirs(sub_dir, exist_ok=True)
  path = os.path.join(sub_dir, 'timing.json')
  old = {'seconds': 0.0, 'finished': False}
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
  if old['finished']:
    return
  with open(path + '.tmp', 'w') as f:
    json.dump({'seconds': old['seconds'] + seconds, 'finished': finished}, f)
  os.replace(path + '.tmp', path)


KEYS = ('runs', 'order', 'evaluate_only', 'seeds', 'shared', 'report')


def run(config, workdir: str) -> list[dict]:
  from ftjax import evaluate
  unknown = sorted(set(config.keys()) - set(KEYS))
  if unknown:
    raise UserError(f'experiment: unknown key(s) {unknown}; known: {", ".join(KEYS)}')
  order = list(config.get('order') or config.runs.keys())
  unknown = set(order) - set(config.runs.keys())
  if unknown:
    raise UserError(f'order names runs the experiment does not define: {sorted(unknown)}')
  for name in order:          # every run's keys and the report's, before the first run trains
    try:
      defaults.complete(config.runs[name])
    except UserError as e:
      raise UserError(f'runs.{name}: {e}') from None
  seeded = seeded_runs(config)
  report.check(config.report, runs=config.runs.keys())
  os.makedirs(workdir, exist_ok=True)
  import jax
  main = jax.process_index() == 0
  instances, configs, done = _instances(order, seeded), [], set()
  for name, seed, rel in instances:     # every reference resolves, before the first run trains
    configs.append(_resolve(config.runs[name], workdir, done, seed, seeded))
    done.add(rel)
  t0 = time.perf_counter()
  for i, ((name, _, rel), cfg) in enumerate(zip(instances, configs)):
    sub = os.path.join(workdir, rel)
    print(f'\n=== [{i + 1}/{len(instances)}] {rel} ({time.perf_counter() - t0:.0f} s elapsed) -> {sub}', flush=True)
    t = time.perf_counter()
    if name in config.get('evaluate_only', ()):
      if not os.path.exists(os.path.join(sub, 'evaluate.json')):
        evaluate.evaluate(cfg, sub)
      stopped = None
    else:
      stopped = train.train_and_evaluate(cfg, sub).stopped_by
    if main:
      _add_time(sub, time.perf_counter() - t, finished=not stopped)
    if stopped:
      print(f'stopped by {stopped}; rerun the same command to resume', flush=True)
      return []
  if not main:      # one writer for the report, as for metrics
    return []
  seconds = {}      # each run's wall time, over every invocation that worked on it (timing.json)
  for name, _, rel in instances:
    if (t := report.timing(workdir, rel)) is not None:
      seconds[name] = seconds.get(name, 0.0) + t
  rows = report.write(workdir, config.report, seconds, seeds=seeded)
  print(f'\nreport: {workdir}/report.md, report.json, curves.png, comparison.png '
        f'({time.perf_counter() - t0:.0f} s in all)', flush=True)
  with open(os.path.join(workdir, 'report.md')) as f:
    print(f.read().split('\n![')[0], flush=True)
  return rows
