"""The main job: does pretraining pay off beyond seed noise? Embedded data, real weights; ~10 min on 2 cores.

Digits: SimCLR pretrains a ResNet-18 (labels unused); probes and SVMs compare its frozen features with a random
init's; it is fine-tuned on 250 labels against the same model from scratch. Text: a small BERT learns masked-LM
on the tweets' text, then is fine-tuned on 500 labelled tweets against scratch; frozen real MiniLM features get
a probe and an SVM on the same 500. 3 seeds per fine-tuning arm; the report gives 95% intervals, paired
differences and the steps each arm needs to reach the scratch arm's final validation accuracy.
  python -m ftjax.main --config=configs/demo.py --workdir=runs/demo
"""
import importlib.util
import os

from ml_collections import ConfigDict

from ftjax.defaults import eval_config


def _config(name, arg=None, **top):
  spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  c.update(top)
  return c


def get_config(arg=None):
  smoke = arg == 'smoke'
  s = 'smoke' if smoke else None
  r = ConfigDict()
  r.digits_simclr = _config('simclr_digits', s, total_steps=6 if smoke else 80)
  r.digits_simclr.schedule.warmup_steps = warmup = 1 if smoke else 20
  r.digits_simclr.evals.svm_250 = eval_config(type='svm', split='test', train_split='train[:250]')
  r.digits_random = r.digits_simclr.copy_and_resolve_references()        # evaluated, never trained
  tune = _config('resnet_digits', s, total_steps=6 if smoke else 100)
  tune.model.update(width=r.digits_simclr.model.width, zero_init_residual=False)
  tune.input.update(train_split='train[:250]', batch_size=16 if smoke else 64)     # few labels: where it should matter
  tune.schedule.warmup_steps = warmup
  tune.evals.eval.every = 3 if smoke else 10      # often enough to time the steps to a target
  r.digits_scratch = tune
  r.digits_pretrained = tune.copy_and_resolve_references()
  r.digits_pretrained.init.source = 'run:digits_simclr'       # the projector is left behind, a head added
  r.text_mlm = _config('text_mlm', s, total_steps=6 if smoke else 350)
  ft = _config('text_finetune', s, total_steps=6 if smoke else 100)
  ft.input.update(tokenizer='run:text_mlm', batch_size=16)     # scratch too: the same vocabulary for both
  ft.evals.eval.update(every=3 if smoke else 20, split='validation[:32]' if smoke else 'validation[:500]')
  r.sentiment_scratch = ft
  r.sentiment_pretrained = ft.copy_and_resolve_references()
  r.sentiment_pretrained.init.source = 'run:text_mlm'
  r.minilm_features = m = _config('bert_finetune_sentiment', s)     # real weights, frozen: evaluated only
  m.input.update(train_split=ft.input.train_split, pp_eval=ft.input.pp_eval)
  m.evals = ConfigDict({k: eval_config(type=k, split=ft.evals.test.split, batch_size=128)
                        for k in ('linear_probe', 'svm')})
  for cfg in r.values():
    cfg.checkpoint.best_metric = ''             # the report reads final metrics; skip best-checkpoint saves
  c = ConfigDict(dict(runs=r))
  c.order = ('digits_simclr', 'digits_random', 'digits_scratch', 'digits_pretrained',
             'text_mlm', 'sentiment_scratch', 'sentiment_pretrained', 'minilm_features')
  c.evaluate_only = ('digits_random', 'minilm_features')
  c.seeds = (0, 1) if smoke else (0, 1, 2)      # every fine-tuning run; the pretraining runs are shared
  c.shared = ('digits_simclr', 'digits_random', 'text_mlm', 'minilm_features')
  feats = lambda label, key: [(f'digits: {label}, SimCLR features', 'digits_simclr', key),
                              (f'digits: {label}, random-init features', 'digits_random', key)]
  c.report = ConfigDict(dict(
      title='Pretrained vs from scratch, same fine-tuning budget (test accuracy)',
      variants=('scratch', 'pretrained'), baseline='scratch', difference='points',
      rows=[(task, v, f'{run}_{v}', 'test/accuracy') for task, run in (('digits', 'digits'),
            ('sentiment text', 'sentiment')) for v in ('scratch', 'pretrained')],
      extras=feats('logistic probe on all labels', 'probe_test/accuracy')
      + feats('logistic probe on 250 labels', 'probe_250/accuracy') + feats('linear SVM on 250 labels', 'svm_250/accuracy')
      + feats('5-shot ridge', 'fewshot/5shot')
      + [('sentiment: TF-IDF + logistic regression, same 500 tweets', 'sentiment_scratch', 'tfidf/accuracy'),
         ('sentiment: logistic probe on frozen MiniLM features, same 500', 'minilm_features', 'linear_probe/accuracy'),
         ('sentiment: linear SVM on frozen MiniLM features, same 500', 'minilm_features', 'svm/accuracy'),
         ('text MLM: validation masked-token accuracy', 'text_mlm', 'eval/accuracy')],
      curves={'digits': ['digits_scratch', 'digits_pretrained'],
              'sentiment text': ['sentiment_scratch', 'sentiment_pretrained']},
      eval_key='eval/accuracy', metric_label='test accuracy'))
  return c
