"""Fine-tune the small BERT of configs/text_mlm.py on 500 labelled sentiment tweets: from scratch
as it stands, or from the MLM run with --config.init.source=DIR --config.input.tokenizer=DIR.
  python -m ftjax.main --config=configs/text_finetune.py --workdir=runs/text_ft \\
      --config.init.source=runs/text_mlm --config.input.tokenizer=runs/text_mlm
"""
import importlib.util
import os

from ftjax.defaults import base_config, eval_config

# The pretraining run's architecture, so its weights load; dropout back on for fine-tuning.
_spec = importlib.util.spec_from_file_location('text_mlm', os.path.join(os.path.dirname(__file__), 'text_mlm.py'))
_mlm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mlm)
ENCODER = {**_mlm.ENCODER, 'hidden_dropout_prob': 0.1, 'attention_probs_dropout_prob': 0.1}


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('bert')
  c.total_steps = 6 if smoke else 250
  c.log_every = 2 if smoke else 50

  c.input.dataset = 'ftjax_sentiment'
  c.input.train_split = 'train[:64]' if smoke else 'train[:500]'   # few labels, 16 epochs
  c.input.tokenizer = 'runs/text_mlm'           # the pretraining run's vocabulary (configs/demo.py: run:text_mlm)
  c.input.batch_size = 16 if smoke else 32
  c.input.pp_train = c.input.pp_eval = 'tokenize(max_len=40)'

  c.model.update(ENCODER)
  c.model.head = 'classification'
  c.model.num_labels = 3
  c.model.pooling = 'mean'                      # MLM trains no [CLS] summary; average the tokens instead
  c.task.inputs = ('input_ids', 'attention_mask', 'token_type_ids')

  c.optim.update(name='adamw', lr=3e-4, weight_decay=0.01, clip_norm=1.0)
  c.schedule.update(name='linear', warmup_steps=1 if smoke else 25)

  split = lambda s: f'{s}[:32]' if smoke else s
  c.evals.eval = eval_config(split=split('validation'), every=0 if smoke else 50, batch_size=250)
  c.evals.test = eval_config(split=split('test'), every=0, batch_size=250)
  c.evals.tfidf = eval_config(type='tfidf', split=split('test'), every=0)
  c.checkpoint.every = 10_000
  return c
