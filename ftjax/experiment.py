"""An experiment: several runs in order, each in its own sub-directory of the workdir, then a report.

A config with a `runs` field (name -> run config) is an experiment; `python -m ftjax.main` runs it.
Strings 'run:<name>' in a run's init.source, input.tokenizer or model.config point at an earlier
run's workdir. Runs in `evaluate_only` only evaluate their model (ftjax.evaluate). Every run resumes
or is skipped when finished, so rerunning after a preemption continues where it stopped.
"""
import os
import time

from ftjax import defaults, report, train
from ftjax.errors import UserError

REFERENCES = (('init', 'source'), ('input', 'tokenizer'), ('model', 'config'))


def _resolve(cfg, workdir, done):
  cfg = cfg.copy_and_resolve_references()
  for section, key in REFERENCES:
    value = cfg[section].get(key)
    if isinstance(value, str) and value.startswith('run:'):
      name = value[4:]
      if name not in done:
        raise UserError(f'{section}.{key}={value!r}: no earlier run named {name!r}')
      cfg[section][key] = os.path.join(workdir, name)
  return cfg


def run(config, workdir: str) -> list[dict]:
  from ftjax import evaluate
  order = list(config.get('order') or config.runs.keys())
  unknown = set(order) - set(config.runs.keys())
  if unknown:
    raise UserError(f'order names runs the experiment does not define: {sorted(unknown)}')
  for name in order:          # every run's keys and the report's, before the first run trains
    try:
      defaults.complete(config.runs[name])
    except UserError as e:
      raise UserError(f'runs.{name}: {e}') from None
  report.check(config.report, runs=config.runs.keys())
  os.makedirs(workdir, exist_ok=True)
  seconds, done, t0 = {}, set(), time.perf_counter()
  for i, name in enumerate(order):
    cfg = _resolve(config.runs[name], workdir, done)
    sub = os.path.join(workdir, name)
    print(f'\n=== [{i + 1}/{len(order)}] {name} ({time.perf_counter() - t0:.0f} s elapsed) -> {sub}', flush=True)
    t = time.perf_counter()
    if name in config.get('evaluate_only', ()):
      if not os.path.exists(os.path.join(sub, 'evaluate.json')):
        evaluate.evaluate(cfg, sub)
    else:
      result = train.train_and_evaluate(cfg, sub)
      if result.stopped_by:
        print(f'stopped by {result.stopped_by}; rerun the same command to resume', flush=True)
        return []
    seconds[name] = time.perf_counter() - t
    done.add(name)
  import jax
  if jax.process_index() != 0:      # one writer for the report, as for metrics
    return []
  rows = report.write(workdir, config.report, seconds)
  print(f'\nreport: {workdir}/report.md, report.json, curves.png, comparison.png '
        f'({time.perf_counter() - t0:.0f} s in all)', flush=True)
  with open(os.path.join(workdir, 'report.md')) as f:
    print(f.read().split('\n![')[0], flush=True)
  return rows
