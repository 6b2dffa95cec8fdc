"""The main job: does pretraining pay off beyond seed noise? Embedded data, real weights; ~3 min of runs on 2 AMD EPYC cores.
Digits: SimCLR pretrains a ResNet-18 (labels unused); probes and SVMs compare its frozen features with a random
init's; it is fine-tuned on 250 labels against the same model from scratch. Text: a small BERT (masked-LM) and a
small GPT (causal LM) learn the tweets' text, each then fine-tuned on 500 labelled tweets against itself from
scratch; frozen real MiniLM features get a probe and an SVM on the same 500. 3 seeds per fine-tuning arm; the
report gives 95% intervals, paired differences and the steps each arm needs to reach scratch's final accuracy.
  python -m ftjax.main --config=configs/demo.py --workdir=runs/demo
"""
import os

from ml_collections import ConfigDict

from ftjax.api import get_config as load
from ftjax.defaults import eval_config


def _config(name, arg=None, **top):
  c = load(os.path.join(os.path.dirname(__file__), f'{name}.py') + (f':{arg}' if arg else ''))
  c.update(top)
  return c


def get_config(arg=None):
  smoke = arg == 'smoke'
  s, r = 'smoke' if smoke else None, ConfigDict()
  warmup = 1 if smoke else 20
  r.digits_simclr = _config('simclr_digits', s, total_steps=6 if smoke else 80, schedule=dict(warmup_steps=warmup))
  r.digits_simclr.evals.svm_250 = eval_config(type='svm', split='test', train_split='train[:250]')
  r.digits_random = r.digits_simclr.copy_and_resolve_references()        # evaluated, never trained
  tune = _config('resnet_digits', s, total_steps=6 if smoke else 100, schedule=dict(warmup_steps=warmup))
  tune.model.update(width=r.digits_simclr.model.width, zero_init_residual=False)
  tune.input.update(train_split='train[:250]', batch_size=16 if smoke else 64)     # few labels: where it should matter
  tune.evals.eval.every = 3 if smoke else 10      # often enough to time the steps to a target
  r.digits_scratch, r.digits_pretrained = tune, tune.copy_and_resolve_references()
  r.digits_pretrained.init.source = 'run:digits_simclr'       # the projector is left behind, a head added
  r.text_mlm = _config('text_mlm', s, total_steps=6 if smoke else 350)
  ft = _config('text_finetune', s, total_steps=6 if smoke else 100,    # scratch too: the same vocabulary for both
                input=dict(tokenizer='run:text_mlm', batch_size=16))
  ft.evals.eval.update(every=3 if smoke else 20, split='validation[:32]' if smoke else 'validation[:500]')
  r.sentiment_scratch, r.sentiment_pretrained = ft, ft.copy_and_resolve_references()
  r.sentiment_pretrained.init.source = 'run:text_mlm'
  r.gpt_lm = _config('gpt_sentiment_lm', s, total_steps=6 if smoke else 200, input=dict(batch_size=16 if smoke else 32))
  g = _config('gpt_finetune_sentiment', s, total_steps=ft.total_steps, evals=ft.evals.copy_and_resolve_references())
  g.input.update(tokenizer='run:gpt_lm', batch_size=16, pp_train=ft.input.pp_train, pp_eval=ft.input.pp_eval)
  r.gpt_scratch, r.gpt_pretrained = g, g.copy_and_resolve_references()
  g.init.source, r.gpt_pretrained.init.source = '', 'run:gpt_lm'
  for cfg in (g, r.gpt_pretrained, r.sentiment_pretrained):
    del cfg.evals['tfidf']                      # the report reads TF-IDF once, from sentiment_scratch
  r.minilm_features = m = _config('bert_finetune_sentiment', s)     # real weights, frozen: evaluated only
  m.input.update(train_split=ft.input.train_split, pp_eval=ft.input.pp_eval)
  m.evals = ConfigDict({k: eval_config(type=k, split=ft.evals.test.split, batch_size=128)
                        for k in ('linear_probe', 'svm')})
  for cfg in r.values():
    cfg.checkpoint.best_metric = ''             # the report reads final metrics; skip best-checkpoint saves
  c = ConfigDict(dict(runs=r))
  c.order = ('digits_simclr', 'digits_random', 'digits_scratch', 'digits_pretrained', 'text_mlm', 'sentiment_scratch',
             'sentiment_pretrained', 'gpt_lm', 'gpt_scratch', 'gpt_pretrained', 'minilm_features')
  c.evaluate_only = ('digits_random', 'minilm_features')
  c.seeds = (0, 1) if smoke else (0, 1, 2)      # every fine-tuning run; the pretraining runs are shared
  c.shared = ('digits_simclr', 'digits_random', 'text_mlm', 'gpt_lm', 'minilm_features')
  tasks = (('digits', 'digits'), ('sentiment text', 'sentiment'), ('sentiment text, GPT', 'gpt'))
  feats = lambda label, key: [(f'digits: {label}, SimCLR features', 'digits_simclr', key),
                              (f'digits: {label}, random-init features', 'digits_random', key)]
  c.report = ConfigDict(dict(
      title='Pretrained vs from scratch, same fine-tuning budget (test accuracy)',
      variants=('scratch', 'pretrained'), baseline='scratch', difference='points',
      rows=[(task, v, f'{run}_{v}', 'test/accuracy') for task, run in tasks for v in ('scratch', 'pretrained')],
      extras=feats('logistic probe on all labels', 'probe_test/accuracy')
      + feats('logistic probe on 250 labels', 'probe_250/accuracy') + feats('linear SVM on 250 labels', 'svm_250/accuracy')
      + feats('5-shot ridge', 'fewshot/5shot')
      + [('sentiment: TF-IDF + logistic regression, same 500 tweets', 'sentiment_scratch', 'tfidf/accuracy'),
         ('sentiment: logistic probe on frozen MiniLM features, same 500', 'minilm_features', 'linear_probe/accuracy'),
         ('sentiment: linear SVM on frozen MiniLM features, same 500', 'minilm_features', 'svm/accuracy'),
         ('text MLM: validation masked-token accuracy', 'text_mlm', 'eval/accuracy'),
         ('GPT causal LM: validation perplexity', 'gpt_lm', 'eval/perplexity'),
         ('GPT causal LM: unigram perplexity, same tokens', 'gpt_lm', 'eval/unigram_perplexity')],
      curves={task: [f'{run}_scratch', f'{run}_pretrained'] for task, run in tasks},
      eval_key='eval/accuracy', metric_label='test accuracy'))
  return c
