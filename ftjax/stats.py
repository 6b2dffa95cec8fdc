"""Statistics over seeds for the report: is a difference between two arms more than seed noise, and how
many steps does an arm need to reach a target?

With 3 seeds a 95% t-interval is wide (t = 4.30 for 2 degrees of freedom): that is the honest answer, and
the report says when an interval includes 0.
"""
import math

import numpy as np


def summary(values, level: float = 0.95) -> dict:
  """{n, mean, std (n-1), ci: (lo, hi)} of a sample; Student's t-interval for the mean, None under 2 values."""
  from scipy import stats            # here: scipy takes seconds to import, and the report is read rarely
  x = np.asarray(list(values), np.float64)
  n = len(x)
  if n == 0:
    raise ValueError('summary of an empty sample')
  mean = float(x.mean())
  if n < 2:
    return dict(n=1, mean=mean, std=None, ci=None)
  std = float(x.std(ddof=1))
  half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
  return dict(n=n, mean=mean, std=std, ci=(mean - half, mean + half))


def paired(a: dict, b: dict, level: float = 0.95) -> dict | None:
  """a - b over the seeds both hold ({seed: value} each): summary() of the differences, plus `seeds` and
  `excludes_zero` (the interval lies on one side of 0). None when no seed is common."""
  common = sorted(set(a) & set(b), key=str)
  if not common:
    return None
  s = summary([a[k] - b[k] for k in common], level)
  s['seeds'] = common
  s['excludes_zero'] = s['ci'] is not None and (s['ci'][0] > 0 or s['ci'][1] < 0)
  return s


def steps_to_target(rows: list[dict], key: str, target: float) -> int | None:
  """The first logged step whose `key` is >= target (rows: a run's metrics.jsonl), None if none is."""
  for r in sorted((r for r in rows if key in r), key=lambda r: r['step']):
    if r[key] >= target:
      return int(r['step'])
  return None
