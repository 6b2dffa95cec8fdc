"""Label efficiency: test accuracy against the number of labelled examples, pretrained vs from scratch, 3 seeds.

The main job's pretraining runs (SimCLR on the digits, masked-LM on the tweets' text, shared by every run) and
its fine-tuning recipes, fit on the first N labelled examples for N in 50, 100, 250, (1000,) all; frozen MiniLM
features get a logistic probe on the same N tweets. Same number of steps at every N (the batch is at most N).
Writes the demo's report plus sweep.png (accuracy against N, log scale, 95% CI bands).
  python -m ftjax.main --config=configs/label_efficiency.py --workdir=runs/label_efficiency
"""
import importlib.util
import os

from ml_collections import ConfigDict

from ftjax.defaults import eval_config

SIZES = dict(digits=(50, 100, 250, 1257), text=(50, 100, 250, 1000, 29_795))    # the last: the whole train split


def _demo(arg):
  spec = importlib.util.spec_from_file_location('demo', os.path.join(os.path.dirname(__file__), 'demo.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def get_config(arg=None):
  smoke = arg == 'smoke'
  demo = _demo('smoke' if smoke else None)
  sizes = dict(digits=(50, 100), text=(50, 100)) if smoke else SIZES
  r = ConfigDict()
  r.digits_simclr, r.text_mlm = demo.runs.digits_simclr, demo.runs.text_mlm
  for run in (r.digits_simclr, r.text_mlm):
    run.evals = ConfigDict()                    # the demo reports their evaluations; not plotted here
  rows, sweep, order = [], [], ['digits_simclr', 'text_mlm']
  for group, prefix, task in (('digits', 'digits', 'digits'), ('text', 'sentiment', 'sentiment text')):
    for n in sizes[group]:
      name = f'{task} @ {n}'
      sweep.append((name, task, n))
      for arm in ('scratch', 'pretrained'):
        cfg = demo.runs[f'{prefix}_{arm}'].copy_and_resolve_references()
        cfg.input.train_split = f'train[:{n}]'
        cfg.input.batch_size = min(cfg.input.batch_size, n)     # 50 digits: a batch of 50, not 128
        cfg.evals.eval.every = 0                  # the test accuracy is what is plotted
        if 'tfidf' in cfg.evals:
          del cfg.evals['tfidf']                  # the demo reports it, on 500 tweets
        r[f'{group}_{n}_{arm}'] = cfg
        rows.append((name, arm, f'{group}_{n}_{arm}', 'test/accuracy'))
        order.append(f'{group}_{n}_{arm}')
      if group == 'text':
        m = r[f'minilm_{n}'] = demo.runs.minilm_features.copy_and_resolve_references()
        m.input.train_split = f'train[:{n}]'
        m.evals = ConfigDict(dict(test=eval_config(type='linear_probe', split=demo.runs.minilm_features.evals.svm.split,
                                                   batch_size=128)))
        rows.append((name, 'minilm', f'minilm_{n}', 'test/accuracy'))
        order.append(f'minilm_{n}')
  c = ConfigDict()
  c.runs = r
  c.order = tuple(order)
  c.evaluate_only = tuple(n for n in order if n.startswith('minilm_'))
  c.seeds = (0,) if smoke else demo.seeds       # the demo's smoke covers several seeds
  c.shared = ('digits_simclr', 'text_mlm') + c.evaluate_only
  c.report = ConfigDict(dict(
      title='Label efficiency: test accuracy against labelled examples',
      variants=('scratch', 'pretrained', 'minilm'), baseline='scratch', compare=('pretrained',),
      difference='points', rows=rows, sweep=sweep, sweep_label='labelled examples (log scale)',
      metric_label='test accuracy',
      notes='minilm: a logistic probe on frozen MiniLM-L6 features of the same labelled tweets (one fit, no seeds).'))
  return c
