"""A small BERT (2 layers x 128) learns masked-LM on the sentiment tweets' text, labels unused: the text
encoder configs/demo.py pretrains. WordPiece (4,000) is trained on the same text first.
  python -m ftjax.main --config=configs/text_mlm.py --workdir=runs/text_mlm
"""
from ftjax.defaults import base_config, eval_config

# No dropout while pretraining: ~2 passes over the text (1000 x 64 of ~29.8k tweets) cannot overfit, and it
# is 12% faster here.
ENCODER = dict(vocab_size=4000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=512, max_position_embeddings=64, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0)


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('bert')
  c.total_steps = 6 if smoke else 1000
  c.log_every = 2 if smoke else 50

  c.input.dataset = 'ftjax_sentiment'
  c.input.train_split = 'train[:2%]' if smoke else 'train'
  c.input.tokenizer = 'train:4000'
  c.input.pack = True                           # one tweet per sequence, [CLS] ... [SEP]
  c.input.max_len = 40
  c.input.batch_size = 16 if smoke else 64
  # 40% masking: more signal per sequence, better at this scale (Wettig et al. 2023, 'Should you mask 15%?')
  c.input.pp_train = c.input.pp_eval = 'mlm_mask(rate=0.4, max_predictions=16, whole_word=True)'

  c.model.update(ENCODER)
  c.model.head = 'mlm'
  c.task.name = 'mlm'

  c.optim.update(name='adamw', lr=2e-3, weight_decay=0.01, b2=0.98, eps=1e-6, clip_norm=1.0)
  c.schedule.update(name='linear', warmup_steps=1 if smoke else 50)

  c.evals.eval = eval_config(split='validation[:1000]', every=0, batch_size=250)
  c.checkpoint.every = 10_000
  return c
