"""A small GPT-2 (2 layers x 128) learns causal LM on the sentiment tweets' text, labels unused: the decoder
configs/gpt_finetune_sentiment.py fine-tunes (GPT's counterpart of configs/text_mlm.py). Its byte-level BPE
(4,000) is trained on the same text first and saved in the workdir, which the fine-tuning reads.
  python -m ftjax.main --config=configs/gpt_sentiment_lm.py --workdir=runs/gpt_sentiment_lm
"""
from ftjax.defaults import base_config, eval_config

# No dropout while pretraining (~2 passes over the text cannot overfit); the fine-tuning turns it on.
DECODER = dict(vocab_size=4000, n_positions=64, n_embd=128, n_layer=2, n_head=4, resid_pdrop=0.0,
               embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('gpt2')
  c.total_steps = 6 if smoke else 600
  c.log_every = 2 if smoke else 50

  c.input.dataset = 'ftjax_sentiment'
  c.input.train_split = 'train[:2%]' if smoke else 'train'
  c.input.tokenizer = 'bpe:4000'                # <|endoftext|> is id 0: the ids DECODER names
  c.input.causal_pack = True                    # tweets + <|endoftext|>, cut into 64-token blocks
  # Each tweet attends only to itself, positions from 0: as the classifier will see it, one tweet a row.
  c.input.doc_mask = True
  c.input.max_len = 64
  c.input.batch_size = 16 if smoke else 64

  c.model.update(DECODER)
  c.model.head = 'lm'
  c.task.name = 'causal_lm'

  c.optim.update(name='adamw', lr=3e-3, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  c.schedule.update(name='cosine', warmup_steps=1 if smoke else 30, end_factor=0.1)

  c.evals.eval = eval_config(type='perplexity', split=f'validation[:{100 if smoke else 1000}]', every=0, batch_size=128)
  c.checkpoint.every = 10_000
  return c
