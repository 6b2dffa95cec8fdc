"""Fine-tune the small GPT-2 of configs/gpt_sentiment_lm.py on 500 labelled sentiment tweets (3 classes), a
classifier on the last real token: from the causal-LM run as it stands (its weights and tokenizer), or
with the arg init=scratch the same model from a fresh init at the same budget (the same tokenizer, so
the two differ only in the starting weights). The `score` head is always freshly initialised.
Measured: test accuracy 0.612 from the LM run, 0.533 from scratch (TF-IDF + logistic regression: 0.636).
  python -m ftjax.main --config=configs/gpt_sentiment_lm.py --workdir=runs/gpt_sentiment_lm
  python -m ftjax.main --config=configs/gpt_finetune_sentiment.py --workdir=runs/gpt_ft
  python -m ftjax.main --config=configs/gpt_finetune_sentiment.py:init=scratch --workdir=runs/gpt_ft_scratch
  # another causal-LM run: --config.init.source=DIR --config.input.tokenizer=DIR
"""
import importlib.util
import os

from ftjax.defaults import base_config, eval_config

LM_RUN = 'runs/gpt_sentiment_lm'
# The pretraining run's architecture, so its weights load; dropout back on for fine-tuning.
_spec = importlib.util.spec_from_file_location('gpt_sentiment_lm', os.path.join(os.path.dirname(__file__),
                                                                                  'gpt_sentiment_lm.py'))
_lm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_lm)
DECODER = {**_lm.DECODER, 'resid_pdrop': 0.1, 'embd_pdrop': 0.1, 'attn_pdrop': 0.1}


def get_config(arg=None):
  opts = dict(p.split('=', 1) if '=' in p else (p, '1') for p in (arg or '').split(',') if p)
  smoke = 'smoke' in opts
  c = base_config('gpt2')
  c.total_steps = 6 if smoke else 250
  c.log_every = 2 if smoke else 50

  c.input.dataset = 'ftjax_sentiment'
  c.input.train_split = 'train[:64]' if smoke else 'train[:500]'   # few labels, 16 epochs
  c.input.tokenizer = LM_RUN                    # the pretraining run's BPE (its workdir's tokenizer.json)
  c.input.batch_size = 16 if smoke else 32
  c.input.pp_train = c.input.pp_eval = 'tokenize(max_len=64)'     # padded on the right, attention_mask 0

  c.model.update(DECODER)
  c.model.head = 'classification'
  c.model.num_labels = 3
  c.init.source = '' if opts.get('init') == 'scratch' else LM_RUN   # every tensor but `score`
  c.task.inputs = ('input_ids', 'attention_mask')

  c.optim.update(name='adamw', lr=3e-4, weight_decay=0.01, clip_norm=1.0)
  c.schedule.update(name='linear', warmup_steps=1 if smoke else 25)

  split = lambda s: f'{s}[:32]' if smoke else s
  c.evals.eval = eval_config(split=split('validation'), every=0 if smoke else 50, batch_size=250)
  c.evals.test = eval_config(split=split('test'), every=0, batch_size=250)
  c.evals.tfidf = eval_config(type='tfidf', split=split('test'), every=0)
  c.checkpoint.every = 10_000
  return c
