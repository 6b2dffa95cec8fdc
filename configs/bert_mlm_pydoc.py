"""A small BERT (4 layers, 128 wide) pretrained from scratch with masked-LM on the embedded corpus (ftjax_pydoc: CPython's
pydoc topics + standard-library docstrings), with an 8,000-token WordPiece vocabulary trained on it.

  python -m ftjax.main --config=configs/bert_mlm_pydoc.py --workdir=runs/mlm
  python -m ftjax.main --config=configs/bert_mlm_pydoc.py:smoke --workdir=/tmp/mlm   # seconds
"""
from ftjax.defaults import base_config, eval_config


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('bert')
  c.total_steps = 8 if smoke else 1000
  c.log_every = 2 if smoke else 50

  c.input.dataset = 'ftjax_pydoc'
  c.input.train_split = 'train[:5%]' if smoke else 'train'
  c.input.tokenizer = 'train:8000'              # WordPiece trained once on the train split, then cached
  c.input.pack = True                           # documents -> [CLS] ... [SEP], never across documents
  c.input.max_len = 32 if smoke else 128
  c.input.batch_size = 8 if smoke else 32
  mask = 'mlm_mask(rate=0.15, max_predictions={}, whole_word=True)'.format(5 if smoke else 20)
  c.input.pp_train = c.input.pp_eval = mask

  c.model.head = 'mlm'
  c.model.vocab_size = 8000
  c.model.hidden_size = 64 if smoke else 128
  c.model.num_hidden_layers = 2 if smoke else 4
  c.model.num_attention_heads = 4
  c.model.intermediate_size = 128 if smoke else 512
  c.model.max_position_embeddings = 128
  c.task.name = 'mlm'

  c.optim.name = 'adamw'
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.01
  c.optim.b2 = 0.98
  c.optim.eps = 1e-6
  c.optim.clip_norm = 1.0
  c.schedule.name = 'linear'
  c.schedule.warmup_steps = 1 if smoke else 100

  c.evals.eval = eval_config(split='validation', every=0 if smoke else 250, batch_size=64)
  c.checkpoint.every = 4 if smoke else 500
  c.checkpoint.best_metric = 'eval/accuracy'
  return c
