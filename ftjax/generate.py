"""Text generation with a causal LM (GPT-2), from a transformers directory or an ftjax run:

  python -m ftjax.generate --init=HF_DIR --prompt='Once upon a time' --max_new_tokens=32
  python -m ftjax.generate --workdir=DIR --prompts_file=prompts.txt --temperature=0.8 --top_k=50 --top_p=0.95

Prompts are batched with left padding (each row's last prompt token in the same slot, positions counted
over real tokens, as transformers' generate does). One jitted program runs the prefill and then the whole
decode loop in a `lax.while_loop` over a KV cache of fixed length: the prompt slots rounded up to a bucket
(`bucket`) plus max_new_tokens. Nothing recompiles per token, few shapes recur across calls, and the loop
stops once every row has emitted EOS. use_cache=False recomputes the full fixed-size buffer every step
instead (same tokens; the cost a KV cache saves). Given a mesh, parameters are laid out by the family's
logical axes and the sharding rules, as in training.
"""
import contextlib
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ftjax import cli, parallel
from ftjax.errors import UserError

MIN_BUCKET = 16


def bucket(n: int, most: int) -> int:
  """Prompt slots for a longest prompt of n tokens: the next power of two (at least MIN_BUCKET), at
  most `most` (so that the cache never exceeds the model's positions). Powers of two: a handful of
  compiled programs serve every prompt length."""
  return max(min(max(MIN_BUCKET, 1 << (n - 1).bit_length()), most), n)


def truncate(logits, top_k, top_p):
  """logits [B, V] with all but the k most likely (top_k > 0), then all but the fewest most likely
  holding top_p of the remaining mass (top_p < 1), set to -inf: transformers' TopK then TopP warpers."""
  desc = -jnp.sort(-logits, -1)
  kth = jnp.where(top_k > 0, jnp.take(desc, jnp.clip(top_k - 1, 0, desc.shape[-1] - 1), axis=-1), -jnp.inf)
  desc = jnp.where(desc < kth[:, None], -jnp.inf, desc)
  probs = jax.nn.softmax(desc, -1)
  kept = (jnp.cumsum(probs, -1) - probs < top_p) | (top_p >= 1)      # the mass above a kept token < top_p
  cutoff = jnp.maximum(kth[:, None], jnp.min(jnp.where(kept, desc, jnp.inf), -1, keepdims=True))
  return jnp.where(logits < cutoff, -jnp.inf, logits)


def _sample(logits, key, temperature, top_k, top_p, *, greedy: bool):
  """Next tokens [B] from logits [B, V]: argmax, or temperature -> top-k -> top-p -> categorical. Only
  `greedy` is static: one program serves every temperature, top_k (0: off) and top_p (1: off)."""
  if greedy:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  logits = jax.lax.cond((top_k > 0) | (top_p < 1), lambda x: truncate(x, top_k, top_p), lambda x: x, logits)
  # A key per row, from its index: a row's tokens do not depend on the batch size (mesh padding).
  keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(logits.shape[0]))
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _positions(mask):
  """Left padding: a row's real tokens count 0, 1, ... (pad slots 0, masked anyway)."""
  return jnp.maximum(jnp.cumsum(mask, -1) - 1, 0).astype(jnp.int32)


class _Static:
  """A graph definition as a static jit argument. The model's config is a plain (unhashable) dataclass:
  the hash is of the config's repr and the graph's size (cheap, and equal for equal models), equality
  is the graph definition's own."""

  def __init__(self, graphdef, config):
    self.graphdef, self.hash = graphdef, hash((repr(config), len(graphdef.nodes)))

  def __hash__(self):
    return self.hash

  def __eq__(self, other):
    return isinstance(other, _Static) and self.hash == other.hash and self.graphdef == other.graphdef


@functools.partial(jax.jit, static_argnames=('graphdef', 'new', 'use_cache', 'greedy'))
def _generate(graphdef, params, rest, tokens, mask, key, temperature, top_k, top_p, eos, fill, *, new: int,
              use_cache: bool, greedy: bool):
  """(tokens [B, new], steps run): the prefill and the decode loop, one program. eos < 0 never matches;
  rows that are done emit `fill`."""
  b, p = tokens.shape
  sample = lambda logits, i: _sample(logits, jax.random.fold_in(key, i), temperature, top_k, top_p, greedy=greedy)
  model = lambda: nnx.merge(graphdef.graphdef, params, rest)     # merged where it is called: inside the loop's trace
  ones = jnp.ones((b, 1), jnp.int32)

  if use_cache:
    positions = _positions(mask)
    out = model()(tokens, attention_mask=mask, positions=positions, cache=model().init_cache(b, p + new))
    memory, pos = out.cache, positions[:, -1] + 1

    def forward(memory, tok, i):
      out = model()(tok[:, None], attention_mask=ones, positions=pos[:, None] + i - 1, cache=memory)
      return out.logits[:, -1], out.cache
  else:     # the whole buffer, prompt and tokens so far, every step; slots not yet generated are masked
    memory = (jnp.concatenate([tokens, jnp.full((b, new), fill, jnp.int32)], 1),
              jnp.concatenate([mask, jnp.zeros((b, new), jnp.int32)], 1))
    logits0 = model()(memory[0], attention_mask=memory[1], positions=_positions(memory[1])).logits[:, p - 1]

    def forward(memory, tok, i):
      buf, m = memory
      buf = jax.lax.dynamic_update_slice(buf, tok[:, None], (0, p + i - 1))
      m = jax.lax.dynamic_update_slice(m, ones, (0, p + i - 1))
      logits = model()(buf, attention_mask=m, positions=_positions(m)).logits
      return jax.lax.dynamic_index_in_dim(logits, p + i - 1, 1, keepdims=False), (buf, m)

  first = sample(out.logits[:, -1] if use_cache else logits0, 0)
  done = first == eos
  out_tokens = jnp.full((b, new), fill, jnp.int32).at[:, 0].set(first)

  def cond(carry):
    i, _, _, done, _ = carry
    return (i < new) & ~jnp.all(done)

  def body(carry):
    i, out_tokens, tok, done, memory = carry
    logits, memory = forward(memory, tok, i)
    nxt = jnp.where(done, fill, sample(logits, i))
    out_tokens = jax.lax.dynamic_update_slice(out_tokens, nxt[:, None], (0, i))
    return i + 1, out_tokens, nxt, done | (nxt == eos), memory

  steps, out_tokens, *_ = jax.lax.while_loop(cond, body, (jnp.int32(1), out_tokens, first, done, memory))
  return out_tokens, steps


def _config_int(cfg, name):
  v = getattr(cfg, name, None)
  return None if v is None or isinstance(v, (list, tuple)) else int(v)


def check_model(model, where: str = 'the model'):
  """A model generate() can drive: a causal LM with a KV cache (GPT-2)."""
  if not callable(getattr(model, 'init_cache', None)) or getattr(model, 'config', None) is None:
    raise UserError(f'{where} is a {type(model).__name__}, not a causal language model with a KV cache; '
                    'generation needs a GPT-2 (model.name=gpt2, head=lm)')


def place(model, mesh=None, rules=None):
  """(graph definition, parameters, other state) of `model`, the latter two pure dicts; given a mesh,
  the parameters are laid out by the family's logical axes and `rules` (default parallel.DEFAULT_RULES),
  as training lays them out, and the rest replicated. Already there (a restored run): nothing moves."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)     # named as the logical axes expect
  if mesh is None:
    return graphdef, params, rest
  axes = getattr(sys.modules[type(model).__module__], 'logical_axes', None)
  shardings = parallel.param_shardings(params, mesh, rules or parallel.DEFAULT_RULES, axes)
  return graphdef, jax.device_put(params, shardings), jax.device_put(rest, parallel.replicated(mesh))


def generate(model, prompts, *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0, eos_id: int | None = None, pad_id: int | None = None, use_cache: bool = True, mesh=None,
             rules=None) -> list[list[int]]:
  """The new tokens of each prompt (lists of token ids), cut after EOS (kept). temperature 0 is greedy;
  else top_k (0: off), then top_p (1: off) filter the distribution sampled with keys from `seed`.
  eos_id / pad_id default to the model config's. Given a mesh, the parameters are placed by the family's
  logical axes and `rules` (config.sharding_rules; parallel.DEFAULT_RULES by default) and the batch is
  split over the data axes."""
  check_model(model)
  cfg = model.config
  vocab, n_pos = int(cfg.vocab_size), int(cfg.n_positions)
  prompts = [list(p) for p in prompts]
  if not prompts:
    raise UserError('generate: no prompts')
  if int(max_new_tokens) < 1:
    raise UserError(f'max_new_tokens={max_new_tokens}; expected an integer >= 1')
  if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
    raise UserError(f'temperature={temperature}, top_k={top_k}, top_p={top_p}; expected temperature >= 0, '
                    'top_k >= 0 (0: off), 0 < top_p <= 1 (1: off)')
  for i, p in enumerate(prompts):
    if not p:
      raise UserError(f'prompt {i} is empty; give it at least one token')
    bad = [t for t in p if not 0 <= int(t) < vocab]
    if bad:
      raise UserError(f'prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab})')
  new = int(max_new_tokens)
  longest = max(len(p) for p in prompts)
  if longest + new > n_pos:
    raise UserError(f'the longest prompt has {longest} tokens: with max_new_tokens={new} that is {longest + new} '
                    f'positions, but the model has n_positions={n_pos} (at most {max(n_pos - new, 0)} prompt tokens)')
  eos = _config_int(cfg, 'eos_token_id') if eos_id is None else int(eos_id)
  eos = eos if eos is not None and 0 <= eos < vocab else -1
  pad = _config_int(cfg, 'pad_token_id') if pad_id is None else int(pad_id)
  fill = pad if pad is not None and 0 <= pad < vocab else max(eos, 0)    # an id the embedding can look up

  # Left-padded [B, P]; under a mesh B is a multiple of the data-parallel devices (copies of row 0).
  rows = len(prompts)
  batch = -(-rows // parallel.data_parallel_size(mesh)) * parallel.data_parallel_size(mesh) if mesh else rows
  width = bucket(longest, n_pos - new)
  tokens = np.full((batch, width), fill, np.int32)
  mask = np.zeros((batch, width), np.int32)
  for r in range(batch):
    p = prompts[r] if r < rows else prompts[0]
    tokens[r, width - len(p):], mask[r, width - len(p):] = p, 1

  graphdef, params, rest = place(model, mesh, rules)
  args = [params, rest, tokens, mask]
  ctx = contextlib.nullcontext()
  if mesh is not None:
    args[2:] = jax.device_put([tokens, mask], parallel.batch_sharding(mesh))
    ctx = parallel.sharding(mesh, rules or parallel.DEFAULT_RULES)     # the activations' constraints read them
  with ctx:
    out, _ = _generate(_Static(graphdef, cfg), *args, jax.random.PRNGKey(seed), jnp.float32(temperature or 1.0),
                       jnp.int32(min(int(top_k), vocab)), jnp.float32(top_p), jnp.int32(eos), jnp.int32(fill), new=new,
                       use_cache=bool(use_cache), greedy=not temperature)
  if jax.process_count() > 1:          # rows on other processes' devices: gathered to every process
    from jax.experimental import multihost_utils
    out = multihost_utils.process_allgather(out, tiled=True)
  out = np.asarray(jax.device_get(out))[:rows].tolist()
  return [row[:row.index(eos) + 1] if eos in row else row for row in out]


# ---- Loading a model and its tokenizer ----------------------------------------------------------
def from_init(path: str):
  """(model, tokenizer) from a transformers GPT-2 directory."""
  from ftjax import hf, hub
  from ftjax.data.tokenizers import load_tokenizer
  if not os.path.isdir(hub.resolve(path)):
    raise UserError(f'--init={path}: no such directory (expected a transformers GPT-2 model directory)')
  model_type = hub.read_config(path)['model_type']
  if model_type != 'gpt2':
    raise UserError(f'--init={path}: model_type={model_type!r}; generation needs a GPT-2 (model_type gpt2)')
  tok = load_tokenizer(path)
  model, _ = hf.from_pretrained(path, head='lm', verbose=False)
  check_model(model, f'--init={path}')
  return model, tok


def from_workdir(workdir: str, mesh_shape=None, mesh_axes=None):
  """(model, tokenizer, mesh, sharding rules) from an ftjax run: its config.json and latest checkpoint,
  restored as ftjax.evaluate restores one (state.layout + state.start), straight into the run's layout."""
  import ml_collections
  from ftjax import checkpoint, hub
  from ftjax import state as states
  from ftjax.data.tokenizers import load_tokenizer, tokenizer_path
  if not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir}: no such directory')
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise UserError(f'--workdir={workdir}: no config.json there; is it an ftjax run directory?')
  config = ml_collections.ConfigDict(hub.read_json(path, 'the config.json an ftjax run writes'))
  if config.get('model', {}).get('name') != 'gpt2' or config.model.get('head', 'lm') != 'lm':
    raise UserError(f'--workdir={workdir}: its model is {config.get("model", {}).get("name")!r} (head '
                    f'{config.get("model", {}).get("head")!r}); generation needs a GPT-2 language model (gpt2, head lm)')
  latest = checkpoint.find_step_dir(os.path.join(workdir, 'checkpoints'))
  if latest is None:
    raise UserError(f'--workdir={workdir}: no checkpoint there yet (expected checkpoints/<step>)')
  if not config.get('input', {}).get('tokenizer'):
    raise UserError(f'--workdir={workdir}: its config names no input.tokenizer to encode prompts with')
  tok = load_tokenizer(tokenizer_path(config.input))
  mesh = parallel.make_mesh(mesh_shape, mesh_axes) if mesh_shape else parallel.make_mesh(config.mesh_shape,
                                                                                          config.mesh_axes)
  lay = states.layout(config, mesh)
  state, _ = states.start(config, lay, step_dir=latest)
  model = nnx.merge(lay.graphdef_eval, state.params, state.model_state)
  check_model(model, f'--workdir={workdir}')
  return model, tok, mesh, tuple(config.sharding_rules)


# ---- Command line -------------------------------------------------------------------------------
def _define(fv):
  from absl import flags
  flags.DEFINE_string('workdir', None, 'an ftjax run directory: its latest checkpoint and config', flag_values=fv)
  flags.DEFINE_string('init', None, 'a transformers GPT-2 directory (config.json, weights, tokenizer)', flag_values=fv)
  flags.DEFINE_string('prompt', None, 'the prompt text', flag_values=fv)
  flags.DEFINE_string('prompts_file', None, 'a UTF-8 file of prompts, one per line (blank lines skipped)',
                      flag_values=fv)
  flags.DEFINE_integer('max_new_tokens', 32, 'tokens generated per prompt (fewer if EOS comes first)', flag_values=fv)
  flags.DEFINE_float('temperature', 0.0, '0 = greedy; else sample at this temperature', flag_values=fv)
  flags.DEFINE_integer('top_k', 0, 'sample among the k most likely tokens (0 = all)', flag_values=fv)
  flags.DEFINE_float('top_p', 1.0, 'sample among the most likely tokens holding this mass (1 = all)', flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'sampling seed: the same seed gives the same tokens', flag_values=fv)
  flags.DEFINE_list('mesh_shape', None, 'e.g. 2,4 (default: the run\'s mesh with --workdir, one device with --init)',
                    flag_values=fv)
  flags.DEFINE_list('mesh_axes', None, 'with --mesh_shape, its axes (default: data,model, as many as it has)',
                    flag_values=fv)


def _prompts(fv) -> list[str]:
  from ftjax.errors import read_text
  if (fv.prompt is None) == (fv.prompts_file is None):
    raise UserError('give exactly one of --prompt=TEXT and --prompts_file=FILE')
  if fv.prompt is not None:
    if not fv.prompt:
      raise UserError('--prompt is empty')
    return [fv.prompt]
  texts = [s for s in read_text(fv.prompts_file, 'prompts, one per line').splitlines() if s.strip()]
  if not texts:
    raise UserError(f'--prompts_file={fv.prompts_file}: no prompts in it (one per line)')
  return texts


def run(fv) -> list[tuple[str, str]]:
  """The command line's work: checks everything, generates; (prompt, continuation) pairs."""
  if (fv.workdir is None) == (fv.init is None):
    raise UserError('give exactly one of --workdir=RUN_DIR (an ftjax run) and --init=HF_DIR (a transformers GPT-2)')
  texts = _prompts(fv)
  try:
    shape = tuple(int(s) for s in fv.mesh_shape) if fv.mesh_shape else None
  except ValueError:
    raise UserError(f'--mesh_shape={",".join(fv.mesh_shape)}: expected integers, e.g. 2,4') from None
  if fv.mesh_axes and not shape:
    raise UserError('--mesh_axes needs --mesh_shape')
  axes = tuple(fv.mesh_axes) if fv.mesh_axes else ('data', 'model')[:len(shape or ())]
  if fv.workdir is not None:
    model, tok, mesh, rules = from_workdir(fv.workdir, shape, axes)
  else:
    model, tok = from_init(fv.init)
    mesh = parallel.make_mesh(shape, axes) if shape else None
    rules = None
  prompts = [tok.encode(t).ids for t in texts]
  out = generate(model, prompts, max_new_tokens=fv.max_new_tokens, temperature=fv.temperature, top_k=fv.top_k,
                 top_p=fv.top_p, seed=fv.seed, mesh=mesh, rules=rules)
  return [(t, tok.decode(ids, skip_special_tokens=True)) for t, ids in zip(texts, out)]


def main(argv) -> int:
  """`python -m ftjax.generate ARGV[1:]`, returning its exit status (tests call it in-process)."""
  from absl import flags, logging
  fv = flags.FlagValues()
  _define(fv)
  try:
    try:
      rest = fv(argv)
    except flags.Error as e:
      cli.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if len(rest) > 1:
      cli.fail(f'unexpected arguments: {" ".join(rest[1:])}')
    logging.set_verbosity(logging.ERROR)
    cli.enable_compilation_cache()
    try:
      pairs = run(fv)
    except UserError as e:
      cli.fail(str(e))
  except SystemExit as e:
    return 0 if e.code is None else e.code
  for i, (prompt, text) in enumerate(pairs):
    if len(pairs) > 1:
      print(f'=== {i}: {prompt}')
    print(text, flush=True)
  return 0


if __name__ == '__main__':
  cli.tune_malloc()
  sys.exit(main(sys.argv))
