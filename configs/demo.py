"""The main job: does pretraining pay off? Embedded data and real weights only; ~10 min on 2 cores.

Digits: SimCLR pretrains a ResNet-18 (labels unused), a linear probe compares its features with a
random init's, then it is fine-tuned on 250 labelled images against the same model from scratch.
Text: a small BERT learns masked-LM on the sentiment tweets' text (labels unused), then is
fine-tuned on 500 labelled tweets against the same model from scratch, beside real MiniLM weights
fine-tuned on the same 500 (fewer steps: it costs 16x more per example). Writes report.md/.json and plots.
  python -m ftjax.main --config=configs/demo.py --workdir=runs/demo
"""
import importlib.util
import os

from ml_collections import ConfigDict


def _config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), f'{name}.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def get_config(arg=None):
  smoke = arg == 'smoke'
  s = 'smoke' if smoke else None
  r = ConfigDict()
  r.digits_simclr = _config('simclr_digits', s)
  r.digits_simclr.total_steps = 6 if smoke else 200
  r.digits_random = r.digits_simclr.copy_and_resolve_references()        # evaluated, never trained
  tune = _config('resnet_digits', s)
  tune.model.update(width=r.digits_simclr.model.width, zero_init_residual=False)
  tune.input.train_split = 'train[:250]'          # few labels: where pretraining should matter
  tune.total_steps = 6 if smoke else 150
  tune.evals.eval.every = 0 if smoke else 50
  r.digits_scratch = tune
  r.digits_pretrained = tune.copy_and_resolve_references()
  r.digits_pretrained.init.source = 'run:digits_simclr'       # the projector is left behind, a head added

  r.text_mlm = _config('text_mlm', s)
  ft = _config('text_finetune', s)
  ft.input.tokenizer = 'run:text_mlm'           # scratch too: the same vocabulary for both
  r.sentiment_scratch = ft
  r.sentiment_pretrained = ft.copy_and_resolve_references()
  r.sentiment_pretrained.init.source = 'run:text_mlm'
  r.sentiment_minilm = m = _config('bert_finetune_sentiment', s)     # 16x the small BERT's cost per example
  m.update(total_steps=6 if smoke else 120, log_every=2 if smoke else 20)
  m.input.update(train_split=ft.input.train_split, batch_size=16, pp_train=ft.input.pp_train,
                 pp_eval=ft.input.pp_eval)
  m.schedule.warmup_steps = 1 if smoke else 12
  m.evals = ft.evals.copy_and_resolve_references()
  del m.evals['eval'], m.evals['tfidf']           # test only: MiniLM inference costs ~25 s per split
  for cfg in r.values():
    cfg.checkpoint.best_metric = ''             # the report reads final metrics; skip best-checkpoint saves

  c = ConfigDict()
  c.runs = r
  c.order = ('digits_simclr', 'digits_random', 'digits_scratch', 'digits_pretrained',
             'text_mlm', 'sentiment_scratch', 'sentiment_pretrained', 'sentiment_minilm')
  c.evaluate_only = ('digits_random',)
  c.report = ConfigDict(dict(
      title='Pretrained vs from scratch, same fine-tuning budget (test accuracy)',
      variants=('scratch', 'pretrained', 'minilm'), baseline='scratch', compare=('pretrained',), difference='points',
      rows=[('digits', 'scratch', 'digits_scratch', 'test/accuracy'),
            ('digits', 'pretrained', 'digits_pretrained', 'test/accuracy'),
            ('sentiment text', 'scratch', 'sentiment_scratch', 'test/accuracy'),
            ('sentiment text', 'pretrained', 'sentiment_pretrained', 'test/accuracy'),
            ('sentiment text', 'minilm', 'sentiment_minilm', 'test/accuracy')],
      extras=[('digits: linear probe on SimCLR features (test)', 'digits_simclr', 'probe_test/accuracy'),
              ('digits: linear probe on random-init features (test)', 'digits_random', 'probe_test/accuracy'),
              ('digits: linear probe fit on 250 labels, SimCLR features', 'digits_simclr', 'probe_250/accuracy'),
              ('digits: linear probe fit on 250 labels, random-init features', 'digits_random', 'probe_250/accuracy'),
              ('digits: 5-shot on SimCLR features', 'digits_simclr', 'fewshot/5shot'),
              ('digits: 5-shot on random-init features', 'digits_random', 'fewshot/5shot'),
              ('sentiment: TF-IDF + logistic regression, same labelled tweets', 'sentiment_scratch', 'tfidf/accuracy'),
              ('text MLM: validation masked-token accuracy', 'text_mlm', 'eval/accuracy')],
      curves={'digits': ['digits_scratch', 'digits_pretrained'],
              'sentiment text': ['sentiment_scratch', 'sentiment_pretrained', 'sentiment_minilm']},
      eval_key='eval/accuracy', metric_label='test accuracy'))
  return c
