"""GPT-2 small (124M) causal-LM pretraining, the standard recipe: 12 layers x 768, 12 heads, context 1024,
AdamW (lr 6e-4, b2 0.95, weight decay 0.1), clip 1.0, linear warmup then cosine to lr / 10, no dropout,
bfloat16 compute. Global batch 512 x 1024 = 524,288 tokens, 19,073 steps = 10B tokens (llm.c's GPT-2 124M
reproduction); the embedded corpus (the default, offline) holds ~450 such blocks, so there it trains 300
steps of 64. Comma-separated args: data=<TFDS name | .txt/.jsonl/.csv path> (its text field is
input.text_field), tokenizer=<GPT-2 tokenizer dir: vocab.json + merges.txt or tokenizer.json>, else a
byte-level BPE of GPT-2's size is trained on the train split; fsdp = parameters and optimizer state sharded.
  python -m ftjax.main --config=configs/gpt2_small.py:data=~/owt.jsonl,tokenizer=~/gpt2,fsdp --workdir=runs/gpt2
  python -m ftjax.main --config=configs/gpt2_small.py:smoke --workdir=/tmp/gpt2s   # tiny, seconds
"""
from ftjax.defaults import base_config, eval_config

GPT2_VOCAB = 50257


def get_config(arg=None):
  opts = dict(p.split('=', 1) if '=' in p else (p, '1') for p in (arg or '').split(',') if p)
  smoke, data = 'smoke' in opts, opts.get('data', '')
  c = base_config('gpt2')
  c.total_steps = 4 if smoke else 19_073 if data else 300
  c.log_every = 1 if smoke else 10
  if 'fsdp' in opts:     # ZeRO-3 style: every parameter and its Adam moments split over the devices
    c.mesh_axes = ('fsdp',)

  c.input.dataset = data or 'ftjax_pydoc'
  if data:      # a corpus may have no validation split: hold out 1% of train
    c.input.train_split, val = ('train[:5%]', 'train[99%:]') if smoke else ('train[:99%]', 'train[99%:]')
  else:
    c.input.train_split, val = ('train[:5%]', 'validation[:20%]') if smoke else ('train', 'validation')
  vocab = 512 if smoke and 'tokenizer' not in opts else GPT2_VOCAB
  c.input.tokenizer = opts.get('tokenizer') or f'bpe:{vocab}'
  c.input.causal_pack = True                    # documents + <|endoftext|>, cut into 1024-token blocks
  c.input.max_len = 64 if smoke else 1024
  # Rows that do not fit per device: --config.optim.accum_steps=K (micro-batches) or --config.model.remat=full.
  c.input.batch_size = 8 if smoke else 512 if data else 64
  c.input.num_threads = 2 if smoke else 8

  c.model.head = 'lm'
  c.model.update(vocab_size=vocab, n_positions=c.input.max_len, n_embd=768, n_layer=12, n_head=12,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  if 'tokenizer' not in opts:                   # a trained BPE's <|endoftext|> is id 0; GPT-2's is 50256
    c.model.update(bos_token_id=0, eos_token_id=0)
  if smoke:
    c.model.update(n_embd=64, n_layer=2, n_head=4)
  c.model.dtype = 'float32' if smoke else 'bfloat16'   # parameters and optimizer state stay float32
  c.task.name = 'causal_lm'

  c.optim.update(name='adamw', lr=6e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
  c.schedule.update(name='cosine', warmup_steps=1 if smoke else 715 if data else 30, end_factor=0.1)

  c.evals.eval = eval_config(type='perplexity', split=val, every=0 if smoke else 1000,
                             batch_size=8 if smoke else 64, sample='The', sample_tokens=8 if smoke else 48)
  c.checkpoint.every = 1000
  c.checkpoint.keep = 3
  return c
