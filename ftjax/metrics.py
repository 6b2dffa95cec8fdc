"""Metrics to three places: metrics.jsonl (one object per line), TensorBoard events, the console.

Only process 0 writes. Floats go to JSON with repr precision, so a resumed run can be compared
bit-for-bit with an uninterrupted one.
"""
import json
import math
import os
import sys
import time

import jax


def _fmt_time(s):
  s = int(s)
  return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


def _summary_writer():
  """tensorboardX's SummaryWriter, imported without torch: its writer imports torch (2-4 s of every run's
  start-up) only to accept torch tensors, which ftjax never logs."""
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None          # `import torch` raises ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


class Writer:

  def __init__(self, workdir: str, total_steps: int, batch_size: int, start_step: int = 0):
    self.main = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.total, self.batch = total_steps, batch_size
    self._t0, self._s0, self._last = None, start_step, None
    self._tb = None
    self.rows = []           # rows already in metrics.jsonl (kept on resume)
    if self.main:
      self._truncate_after(start_step)
      self._tb = _summary_writer()(os.path.join(workdir, 'tb'), flush_secs=30)

  def _truncate_after(self, step):
    """On resume, drop rows the restored checkpoint never saw (written after it, before a crash)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [line for line in f if line.strip() and json.loads(line).get('step', 0) <= step]
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(rows)
    os.replace(tmp, self.path)
    self.rows = [json.loads(line) for line in rows]

  def has_metrics(self, step: int, prefix: str) -> bool:
    """Whether metrics.jsonl holds a `prefix...` value at `step` (an evaluation that completed)."""
    return any(r.get('step') == step and any(k.startswith(prefix) for k in r) for r in self.rows)

  def write(self, step: int, scalars: dict):
    if not self.main:
      return
    row = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    for k, v in row.items():
      if k != 'step' and math.isfinite(v):
        self._tb.add_scalar(k, v, step)

  def progress(self, step: int, scalars: dict):
    """Console line: step, loss, lr, examples/s and ETA, measured since the first logged step."""
    now = time.perf_counter()
    if self._t0 is None:
      self._t0, self._s0, self._last = now, step, (now, step)
      rate = avg = float('nan')
    else:
      rate = (step - self._last[1]) / max(now - self._last[0], 1e-9)     # the last window
      avg = (step - self._s0) / max(now - self._t0, 1e-9)                # the run so far, for the ETA
      self._last = (now, step)
    eta = _fmt_time((self.total - step) / avg) if avg == avg and avg > 0 else '?'
    if self.main:
      loss = scalars.get('train/loss', float('nan'))
      lr = scalars.get('train/learning_rate', float('nan'))
      speed = f'{rate * self.batch:,.0f} ex/s' if rate == rate else 'compiled'
      print(f'step {step:>6}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | {speed} | ETA {eta}', flush=True)

  def log(self, msg: str):
    if self.main:
      print(msg, flush=True, file=sys.stdout)

  def close(self):
    if self._tb is not None:
      self._tb.close()
