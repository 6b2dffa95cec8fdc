"""GPT-2 decoder and heads with transformers' GPT2Config semantics and module names.

Module paths mirror transformers' (`transformer.h.3.attn.c_attn`, `transformer.ln_f`), so checkpoints
convert by renaming leaves alone (ftjax/hf.py). transformers' Conv1D keeps its weight as [in, out], which is
nnx.Linear's kernel layout: no transpose on either side, and LoRA (ftjax/models/lora.py) adapts c_attn /
c_proj as any dense layer. The LM head is tied to `wte` (no parameter of its own, as transformers ties
`lm_head.weight`). Attention is `jax.nn.dot_product_attention` with one boolean mask for causality,
padding and packed documents (`segment_ids`); an explicit softmax when attention dropout is active. A
`KVCache` of fixed shape makes prefill and token-by-token decoding jit once each (ftjax/generate.py).
model.scan_layers stacks the blocks' parameters ([n_layer, ...] under `h`, no index) and runs them with
nnx.scan, the KV cache included (one [n_layer, ...] array for keys, one for values).
"""
import dataclasses
import numbers
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections.config_dict import placeholder

from ftjax import hub, models, parallel
from ftjax.errors import UserError
from ftjax.models import bert
from ftjax.models.bert import ACTS, Dropout


@dataclasses.dataclass
class GPT2Config:
  """transformers.GPT2Config's fields and defaults (gpt2, the 124M model); summary_* (double heads) omitted."""
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int | None = None              # None: 4 * n_embd
  activation_function: str = 'gelu_new'
  resid_pdrop: float = 0.1
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  layer_norm_epsilon: float = 1e-5
  initializer_range: float = 0.02
  scale_attn_weights: bool = True
  scale_attn_by_inverse_layer_idx: bool = False
  reorder_and_upcast_attn: bool = False   # always so here: attention logits and softmax are float32
  bos_token_id: int | None = 50256
  eos_token_id: int | None = 50256
  pad_token_id: int | None = None

  @property
  def inner_size(self) -> int:
    return self.n_inner if self.n_inner is not None else 4 * self.n_embd

  @classmethod
  def from_dict(cls, d: dict, where: str = 'model config for gpt2', required: tuple = ()) -> 'GPT2Config':
    """Known fields of `d` (a config.json's dict, or model-config overrides), each checked for its type
    and range; `where` names the source in errors, `required` lists fields it must hold."""
    names = {f.name for f in dataclasses.fields(cls)}
    for k in required:
      if k not in d:
        raise UserError(f'{where}: {k} is missing; expected {_FIELD_CHECKS[k][2]}')
    for k, v in d.items():
      if k in _FIELD_CHECKS:
        types, ok, expected = _FIELD_CHECKS[k]
        if isinstance(v, bool) != (types == _BOOL) or not isinstance(v, types) or not ok(v):
          raise UserError(f'{where}: {k}={v!r} ({type(v).__name__}); expected {expected}')
    cfg = cls(**{k: v for k, v in d.items() if k in names})
    if cfg.activation_function not in ACTS:
      raise UserError(f'{where}: activation_function={cfg.activation_function!r} is not supported; choose one of '
                      f'{", ".join(ACTS)}')
    if cfg.n_embd % cfg.n_head:
      raise UserError(f'{where}: n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}')
    return cfg


_INT, _NUM, _BOOL = (numbers.Integral,), (numbers.Real,), (bool,)    # numpy scalars too; bools apart
_OPT_INT = (numbers.Integral, type(None))
_FIELD_CHECKS = {      # field: (accepted types, valid value, what is expected)
    'vocab_size': (_INT, lambda v: v >= 1, 'an integer >= 1 (the vocabulary size)'),
    'n_positions': (_INT, lambda v: v >= 1, 'an integer >= 1 (the longest sequence)'),
    'n_embd': (_INT, lambda v: v >= 1, 'an integer >= 1'),
    'n_layer': (_INT, lambda v: v >= 0, 'an integer >= 0'),
    'n_head': (_INT, lambda v: v >= 1, 'an integer >= 1 that divides n_embd'),
    'n_inner': (_OPT_INT, lambda v: v is None or v >= 1, 'null (4 * n_embd) or an integer >= 1'),
    'activation_function': ((str,), lambda v: True, f'a string, one of {", ".join(ACTS)}'),
    'resid_pdrop': (_NUM, lambda v: 0 <= v <= 1, 'a number in [0, 1]'),
    'embd_pdrop': (_NUM, lambda v: 0 <= v <= 1, 'a number in [0, 1]'),
    'attn_pdrop': (_NUM, lambda v: 0 <= v <= 1, 'a number in [0, 1]'),
    'layer_norm_epsilon': (_NUM, lambda v: v > 0, 'a number > 0'),
    'initializer_range': (_NUM, lambda v: v >= 0, 'a number >= 0'),
    'scale_attn_weights': (_BOOL, lambda v: True, 'true or false'),
    'scale_attn_by_inverse_layer_idx': (_BOOL, lambda v: True, 'true or false'),
    'reorder_and_upcast_attn': (_BOOL, lambda v: True, 'true or false'),
    'bos_token_id': (_OPT_INT, lambda v: v is None or v >= 0, 'an integer >= 0 or null'),
    'eos_token_id': (_OPT_INT, lambda v: v is None or v >= 0, 'an integer >= 0 or null'),
    'pad_token_id': (_OPT_INT, lambda v: v is None or v >= 0, 'an integer >= 0 or null'),
}
# What a config.json must state: the architecture's shapes (a default would only fail later, as a
# shape mismatch against the weights).
REQUIRED_IN_FILE = ('vocab_size', 'n_positions', 'n_embd', 'n_layer', 'n_head')
# transformers' attribute_map: a hand-written config.json may use these names.
_ALIASES = {'hidden_size': 'n_embd', 'max_position_embeddings': 'n_positions', 'num_attention_heads': 'n_head',
            'num_hidden_layers': 'n_layer'}


@flax.struct.dataclass
class GPT2Output:
  """What every GPT-2 model returns: the fields its head fills, None for the rest."""
  last_hidden_state: jax.Array | None = None    # after ln_f
  logits: jax.Array | None = None               # lm: [B, T, vocab]; classification: [B, num_labels]
  cache: 'KVCache | None' = None                # the updated cache when one was given


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer in `max_length` slots, for decoding one jit-compiled step at a
  time. A call with T new tokens writes them at slots [index, index + T); slot j is attended to when
  mask[b, j] (a real token) and j is at or before the query's slot. Fixed shapes: nothing recompiles
  as it fills. Writing past max_length is not checked under jit (the write would be clamped):
  size it for the prompt plus every new token (init_cache refuses more than n_positions)."""
  k: Any                  # per layer, [B, max_length, n_head, head_dim]; scan_layers: one [n_layer, B, ...] array
  v: Any
  index: jax.Array        # int32 scalar: slots filled
  mask: jax.Array         # [B, max_length] bool: slots holding real tokens


def check_rngs(model: nnx.Module, rngs):
  bert.require_rngs(model, _dropouts(model), rngs)


def _dropouts(model):
  """Every Dropout of a GPT-2 model or head, by attribute (as bert's: cheap enough for eager calls)."""
  base = model.transformer if hasattr(model, 'transformer') else model
  yield base.drop
  for b in [base.h] if base.scan_layers else base.h:
    yield from (b.attn.attn_dropout, b.attn.resid_dropout, b.mlp.dropout)


class _Ctx:
  """What every sub-module needs: config, compute dtype, initialisers, the attention kernel."""

  def __init__(self, cfg: GPT2Config, dtype, attention='auto', remat='', scan_layers=False):
    if attention not in ('auto', 'xla', 'cudnn'):
      raise UserError(f'gpt2 attention={attention!r}; choose auto, xla or cudnn')
    models.remat_policy(remat)      # validates the name
    self.cfg, self.dtype, self.remat, self.scan_layers = cfg, dtype, remat, bool(scan_layers)
    if self.scan_layers and cfg.scale_attn_by_inverse_layer_idx:
      raise UserError('model.scan_layers=True runs one block for every layer: it needs '
                      'scale_attn_by_inverse_layer_idx=False (an attention scale per layer)')
    self.init = nnx.initializers.normal(cfg.initializer_range)
    # GPT-2's scheme: the projections back into the residual stream scaled by 1/sqrt(2 * n_layer).
    self.proj_init = nnx.initializers.normal(cfg.initializer_range / max(2 * cfg.n_layer, 1) ** 0.5)
    cudnn_ok = jax.default_backend() == 'gpu' and dtype in (jnp.bfloat16, jnp.float16)
    if attention == 'cudnn' and not cudnn_ok:
      raise UserError('gpt2 attention=cudnn needs a GPU and model.dtype bfloat16 or float16')
    if attention == 'cudnn' and cfg.attn_pdrop:
      raise UserError('gpt2 attention=cudnn has no attention dropout: set attn_pdrop=0')
    self.attention = 'cudnn' if attention == 'cudnn' or (attention == 'auto' and cudnn_ok) else 'xla'

  def dense(self, din, dout, rngs, init=None):
    return nnx.Linear(din, dout, dtype=self.dtype, kernel_init=init or self.init, rngs=rngs)

  def norm(self, rngs):
    return nnx.LayerNorm(self.cfg.n_embd, epsilon=self.cfg.layer_norm_epsilon, dtype=self.dtype,
                         use_fast_variance=False, rngs=rngs)


class GPT2Attention(nnx.Module):
  def __init__(self, c: _Ctx, layer_idx: int, rngs):
    e = c.cfg.n_embd
    self.num_heads, self.head_dim = c.cfg.n_head, e // c.cfg.n_head
    self.implementation = c.attention
    self.scale = (self.head_dim ** -0.5 if c.cfg.scale_attn_weights else 1.0) / (
        layer_idx + 1 if c.cfg.scale_attn_by_inverse_layer_idx else 1)
    self.c_attn = c.dense(e, 3 * e, rngs)        # fused [q | k | v]
    self.c_proj = c.dense(e, e, rngs, c.proj_init)
    self.attn_dropout = Dropout(c.cfg.attn_pdrop)
    self.resid_dropout = Dropout(c.cfg.resid_pdrop)

  def __call__(self, x, mask, kv=None, index=None, rngs=None):
    """mask [B, 1, T, S] bool. kv: this layer's cached (k, v) [B, S, H, D], written at `index` and
    returned updated; without it S = T and the mask is causal (cuDNN may then skip the upper triangle)."""
    b, t, _ = x.shape
    qkv = self.c_attn(x).reshape(b, t, 3, self.num_heads, self.head_dim)
    q, k, v = (parallel.constrain(qkv[:, :, i], ('batch', None, 'heads', None)) for i in range(3))
    if kv is not None:
      k, v = (parallel.constrain(jax.lax.dynamic_update_slice(old, new.astype(old.dtype), (0, index, 0, 0)),
                                 ('batch', None, 'heads', None)) for old, new in zip(kv, (k, v)))
      kv = (k, v)
      k, v = k.astype(q.dtype), v.astype(q.dtype)
    if self.attn_dropout.deterministic or self.attn_dropout.rate == 0:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=self.scale, is_causal=kv is None,
                                         implementation=self.implementation if kv is None else 'xla')
    else:
      logits = jnp.einsum('bqnh,bknh->bnqk', q, k, preferred_element_type=jnp.float32) * self.scale
      probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1).astype(v.dtype)
      out = jnp.einsum('bnqk,bknh->bqnh', self.attn_dropout(probs, rngs=rngs), v)
    return self.resid_dropout(self.c_proj(out.reshape(b, t, -1)), rngs=rngs), kv


class GPT2MLP(nnx.Module):
  def __init__(self, c: _Ctx, rngs):
    self.c_fc = c.dense(c.cfg.n_embd, c.cfg.inner_size, rngs)
    self.c_proj = c.dense(c.cfg.inner_size, c.cfg.n_embd, rngs, c.proj_init)
    self.act = ACTS[c.cfg.activation_function]
    self.dropout = Dropout(c.cfg.resid_pdrop)

  def __call__(self, x, rngs=None):
    h = parallel.constrain(self.act(self.c_fc(x)), ('batch', None, 'mlp'))
    return self.dropout(self.c_proj(h), rngs=rngs)


class GPT2Block(nnx.Module):
  """Pre-LayerNorm residual block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""

  def __init__(self, c: _Ctx, layer_idx: int, rngs):
    self.ln_1 = c.norm(rngs)
    self.attn = GPT2Attention(c, layer_idx, rngs)
    self.ln_2 = c.norm(rngs)
    self.mlp = GPT2MLP(c, rngs)

  def __call__(self, x, mask, kv=None, index=None, rngs=None):
    a, kv = self.attn(self.ln_1(x), mask, kv, index, rngs)
    x = x + a
    return x + self.mlp(self.ln_2(x), rngs), kv


def segment_positions(segment_ids):
  """Positions counted from 0 at each segment start (packed documents), [B, T]."""
  t = jnp.arange(segment_ids.shape[1])
  start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  return t - jax.lax.cummax(jnp.where(start, t, 0), axis=1)


class GPT2Model(nnx.Module):
  """The decoder: (input_ids, attention_mask, segment_ids, positions, cache) -> GPT2Output."""

  def __init__(self, cfg: GPT2Config, *, dtype=jnp.float32, attention='auto', remat='', scan_layers=False,
               rngs: nnx.Rngs):
    c = _Ctx(cfg, dtype, attention, remat, scan_layers)
    self.config, self.dtype, self.remat = cfg, dtype, remat
    self.scan_layers = c.scan_layers and cfg.n_layer > 0
    self.wte = nnx.Embed(cfg.vocab_size, cfg.n_embd, dtype=dtype, embedding_init=c.init, rngs=rngs)
    self.wpe = nnx.Embed(cfg.n_positions, cfg.n_embd, dtype=dtype, embedding_init=c.init, rngs=rngs)
    self.drop = Dropout(cfg.embd_pdrop)
    if self.scan_layers:      # one block, parameters [n_layer, ...] (models.stack)
      self.h = models.stack(lambda r: GPT2Block(c, 0, r), cfg.n_layer, rngs)
    else:
      self.h = nnx.List([GPT2Block(c, i, rngs) for i in range(cfg.n_layer)])
    self.ln_f = c.norm(rngs)

  def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
    """An empty cache of `max_length` slots (prompt plus new tokens), in the compute dtype by default."""
    if max_length > self.config.n_positions:
      raise UserError(f'gpt2 init_cache: max_length={max_length} exceeds n_positions={self.config.n_positions}')
    shape = (batch_size, max_length, self.config.n_head, self.config.n_embd // self.config.n_head)
    dtype = dtype or self.dtype
    if self.scan_layers:
      zeros = parallel.constrain(jnp.zeros((self.config.n_layer, *shape), dtype), (None, 'batch', None, 'heads', None))
      return KVCache(k=zeros, v=jnp.zeros_like(zeros), index=jnp.zeros((), jnp.int32),
                     mask=jnp.zeros((batch_size, max_length), bool))
    zeros = tuple(parallel.constrain(jnp.zeros(shape, dtype), ('batch', None, 'heads', None)) for _ in self.h)
    return KVCache(k=zeros, v=tuple(jnp.zeros_like(z) for z in zeros), index=jnp.zeros((), jnp.int32),
                   mask=jnp.zeros((batch_size, max_length), bool))

  def __call__(self, input_ids, attention_mask=None, segment_ids=None, rngs=None, *, positions=None,
               cache: KVCache | None = None) -> GPT2Output:
    check_rngs(self, rngs)
    b, t = input_ids.shape
    real = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
    if cache is None:
      if positions is None and t > self.config.n_positions:
        raise UserError(f'gpt2: {t} tokens per sequence, more than n_positions={self.config.n_positions}')
      index, q_slot, key_mask = None, jnp.arange(t), real
      k_slot = q_slot
      if positions is None:
        positions = segment_positions(segment_ids) if segment_ids is not None else q_slot[None]
    else:
      if segment_ids is not None:
        raise UserError('gpt2: segment_ids (packed documents) with a KV cache is not supported')
      index = cache.index
      key_mask = jax.lax.dynamic_update_slice(cache.mask, real, (0, index))
      q_slot, k_slot = index + jnp.arange(t), jnp.arange(cache.mask.shape[1])
      if positions is None:
        positions = q_slot[None]
    causal = k_slot[None, :] <= q_slot[:, None]                                # [T, S]
    # Real keys only, but every query sees itself: a padding query then has one key, not none
    # (no fully masked row, which some kernels turn into NaN); real tokens are unaffected.
    keys = key_mask[:, None, :] | (k_slot[None, :] == q_slot[:, None])[None]  # [B, T, S]
    allowed = causal[None] & keys
    if segment_ids is not None:
      allowed &= segment_ids[:, :, None] == segment_ids[:, None, :]
    mask = allowed[:, None]                                                     # [B, 1(heads), T, S]
    pos = jnp.broadcast_to(positions, (b, t))
    x = self.drop(self.wte(input_ids) + self.wpe(pos), rngs=rngs)
    if self.scan_layers:
      def one(block, x, kv, rngs):
        x, kv = block(x, mask, kv, index, rngs)
        return parallel.constrain(x, ('batch', None, None)), kv
      x, kv = models.scan(one, self.h, x, None if cache is None else (cache.k, cache.v), rngs=rngs,
                          remat_name=self.remat)
      new = None if cache is None else KVCache(k=kv[0], v=kv[1], index=index + t, mask=key_mask)
      return GPT2Output(last_hidden_state=self.ln_f(x), cache=new)
    call = models.remat(lambda block, x, mask, kv, index, rngs: block(x, mask, kv, index, rngs), self.remat)
    ks, vs = [], []
    for i, block in enumerate(self.h):
      x, kv = call(block, x, mask, None if cache is None else (cache.k[i], cache.v[i]), index, rngs)
      x = parallel.constrain(x, ('batch', None, None))
      if kv is not None:
        ks.append(kv[0])
        vs.append(kv[1])
    new = None if cache is None else KVCache(k=tuple(ks), v=tuple(vs), index=index + t, mask=key_mask)
    return GPT2Output(last_hidden_state=self.ln_f(x), cache=new)

  def embed(self, input_ids, attention_mask=None, segment_ids=None, rngs=None):
    """Sequence features for probes, [B, n_embd] float32: the mean of the last hidden states over real
    tokens. A causal model's last real token has seen the whole sequence and is a fine choice too;
    the mean is what the other families give, so probes compare like with like."""
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    h = self(input_ids, attention_mask, segment_ids, rngs).last_hidden_state.astype(jnp.float32)
    m = attention_mask.astype(jnp.float32)[..., None]
    return (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


class _Head(nnx.Module):
  """What heads share: the decoder as `transformer` (transformers' prefix), its config and features."""

  def __init__(self, cfg: GPT2Config, rngs: nnx.Rngs, **base):
    self.config = cfg
    self.transformer = GPT2Model(cfg, rngs=rngs, **base)

  def embed(self, input_ids, attention_mask=None, segment_ids=None, rngs=None):
    check_rngs(self, rngs)
    return self.transformer.embed(input_ids, attention_mask, segment_ids, rngs)


class GPT2LMHeadModel(_Head):
  """Next-token logits from the tied embedding: wte.attend(ln_f output)."""

  def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs, **base):
    super().__init__(cfg, rngs, **base)

  def init_cache(self, batch_size: int, max_length: int, dtype=None) -> KVCache:
    return self.transformer.init_cache(batch_size, max_length, dtype)

  def __call__(self, input_ids, attention_mask=None, segment_ids=None, rngs=None, *, positions=None,
               cache: KVCache | None = None) -> GPT2Output:
    check_rngs(self, rngs)
    out = self.transformer(input_ids, attention_mask, segment_ids, rngs, positions=positions, cache=cache)
    logits = self.transformer.wte.attend(out.last_hidden_state).astype(jnp.float32)
    return out.replace(logits=parallel.constrain(logits, ('batch', None, 'vocab')))


class GPT2ForSequenceClassification(_Head):
  """`score` (no bias) on the hidden state of each row's last real token: the last position with
  attention_mask 1, else (as transformers) the last token that is not pad_token_id, else the last one.
  num_labels=1 is regression."""

  def __init__(self, cfg: GPT2Config, *, num_labels=2, dtype=jnp.float32, rngs: nnx.Rngs, **base):
    super().__init__(cfg, rngs, dtype=dtype, **base)
    self.score = nnx.Linear(cfg.n_embd, num_labels, use_bias=False, dtype=dtype,
                            kernel_init=nnx.initializers.normal(cfg.initializer_range), rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, segment_ids=None, rngs=None, *, positions=None,
               cache=None) -> GPT2Output:
    check_rngs(self, rngs)
    if cache is not None:
      raise UserError('gpt2 head=classification takes no KV cache')
    h = self.transformer(input_ids, attention_mask, segment_ids, rngs, positions=positions).last_hidden_state
    if attention_mask is not None:
      real = attention_mask.astype(jnp.int32)
    elif self.config.pad_token_id is not None:
      real = (input_ids != self.config.pad_token_id).astype(jnp.int32)
    else:
      real = jnp.ones_like(input_ids, jnp.int32)
    last = (jnp.arange(input_ids.shape[1], dtype=jnp.int32) * real).argmax(-1)    # rightmost real token
    pooled = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return GPT2Output(last_hidden_state=h, logits=self.score(pooled).astype(jnp.float32))


HEADS = {'none': GPT2Model, 'lm': GPT2LMHeadModel, 'classification': GPT2ForSequenceClassification}


Output = GPT2Output      # what every model of the family returns (protocols.ModelFamily)


def defaults() -> dict:
  """Every key `build` reads beyond models.COMMON. The architecture fields are transformers.GPT2Config's:
  None takes model.config's value, else GPT2Config's default (gpt2, 124M)."""
  arch = {f.name: placeholder(f.type if isinstance(f.type, type) else int)     # int | None: n_inner, token ids
          for f in dataclasses.fields(GPT2Config)}
  return dict(
      head='none',            # none | lm (tied to wte) | classification (last real token)
      num_labels=2,           # classification; 1 = regression
      attention='auto',       # auto | xla | cudnn (fused, GPU in half precision, no attention dropout)
      scan_layers=False,      # stack the blocks' parameters ([n_layer, ...] under h) and run them with nnx.scan:
                              # compile time flat in depth; no LoRA, no optim.layer_decay
      **arch)


def _gpt2_config(cfg: dict) -> GPT2Config:
  """GPT2Config from model.config (a transformers config.json or directory, or '') overridden by the
  fields the model config sets."""
  base: dict[str, Any] = {}
  if cfg.get('config'):
    where = hub.config_file(cfg['config'])
    base = dict(hub.read_config(cfg['config'], expect='gpt2'))
    base.update({new: base[old] for old, new in _ALIASES.items() if old in base and new not in base})
    GPT2Config.from_dict(base, where=where, required=REQUIRED_IN_FILE)
    if cfg.get('head') == 'lm' and base.get('tie_word_embeddings', True) is not True:
      raise UserError(f'{where}: tie_word_embeddings={base["tie_word_embeddings"]!r}; ftjax\'s GPT-2 LM head is '
                      'tied to wte (an untied lm_head.weight would be ignored)')
  fields = {f.name: cfg[f.name] for f in dataclasses.fields(GPT2Config) if cfg.get(f.name) is not None}
  return GPT2Config.from_dict({**base, **fields})


def vocab_size(cfg: dict) -> int:
  return _gpt2_config(cfg).vocab_size


def build(cfg: dict, rngs: nnx.Rngs) -> nnx.Module:
  """cfg: models.COMMON's keys (but name, lora) and defaults()'s, every one present (models.resolve)."""
  head = cfg['head']
  if head not in HEADS:
    raise UserError(f'model.head={head!r}; choose one of {", ".join(HEADS)}')
  kw = dict(dtype=models.dtype(cfg['dtype']), rngs=rngs, attention=cfg['attention'], remat=cfg['remat'],
            scan_layers=bool(cfg['scan_layers']))
  if head == 'classification':
    kw['num_labels'] = cfg['num_labels']
  return HEADS[head](_gpt2_config(cfg), **kw)


# ---- transformers layout (ftjax/hf.py) ----------------------------------------------------------
HF_PREFIX = 'transformer.'


def hf_name(path: tuple) -> tuple[str, str | None]:
  """ftjax param path -> (transformers name, layout): Conv1D weights are [in, out] as nnx kernels; only
  `score` is a torch nn.Linear ([out, in])."""
  *mods, leaf = (str(p) for p in path)
  if leaf == 'kernel':
    return '.'.join(mods + ['weight']), 'T' if mods[-1:] == ['score'] else None
  if leaf in ('embedding', 'scale'):
    return '.'.join(mods + ['weight']), None
  return '.'.join(mods + [leaf]), None


# A parameter of stacked blocks (model.scan_layers): `h.` not followed by a block index.
_STACKED = re.compile(r'^(transformer\.)?h\.(?!\d+\.)')


def layer_index_at(path: tuple) -> int | None:
  """Where a block index goes in the path of a stacked parameter (model.scan_layers), whose leading axis
  is the block; None for any other. ftjax/hf.py splits such parameters into transformers' per-block
  tensors (`h.<i>.`) and stacks them back."""
  return models.stacked_index(_STACKED, path)


def lr_layer(name: str) -> int | None:
  """Depth for layer-wise lr decay: wte / wpe 0, block i -> i + 1, ln_f and heads on top."""
  if re.match(r'(transformer\.)?(wte|wpe)\.', name):
    return 0
  if _STACKED.search(name):
    raise UserError(f'optim.layer_decay reads the layer from parameter names, and {name} holds every block '
                    '(model.scan_layers=True): set model.scan_layers=False or optim.layer_decay=1')
  m = re.match(r'(transformer\.)?h\.(\d+)\.', name)
  return int(m.group(2)) + 1 if m else None


# Logical axes of every parameter (as bert's: Megatron-style, c_attn and c_fc split by output, the
# projections back by input). A parameter no pattern names is an error, not silently replicated.
_KERNEL_AXES = ((r'(^|\.)h\.(\d+\.)?attn\.c_attn$', ('embed', 'heads')),
                (r'(^|\.)h\.(\d+\.)?attn\.c_proj$', ('heads', 'embed')),
                (r'(^|\.)h\.(\d+\.)?mlp\.c_fc$', ('embed', 'mlp')),
                (r'(^|\.)h\.(\d+\.)?mlp\.c_proj$', ('mlp', 'embed')),
                (r'^score$', ('embed', None)))


def logical_axes(name: str, ndim: int) -> tuple:
  """A stacked parameter's (model.scan_layers) are its block's, after None for the layer axis."""
  if _STACKED.search(name):
    return (None, *_block_axes(name))
  return _block_axes(name)


def _block_axes(name: str) -> tuple:
  module, leaf = name.rsplit('.', 1) if '.' in name else ('', name)
  if re.fullmatch(r'(transformer\.)?wte', module) and leaf == 'embedding':
    return ('vocab', 'embed')
  if re.fullmatch(r'(transformer\.)?wpe', module) and leaf == 'embedding':
    return (None, 'embed')
  if re.fullmatch(r'(transformer\.)?(h\.(\d+\.)?ln_[12]|ln_f)', module) and leaf in ('scale', 'bias'):
    return ('embed',)
  kernel = next((axes for pat, axes in _KERNEL_AXES if re.search(pat, module)), None)
  if kernel is None or leaf not in ('kernel', 'bias', 'lora_a', 'lora_b'):
    raise ValueError(f'gpt2: no logical axes for parameter {name}; name them in gpt2._KERNEL_AXES')
  return {'kernel': kernel, 'bias': (kernel[1],), 'lora_a': (kernel[0], None), 'lora_b': (None, kernel[1])}[leaf]


ARCHITECTURES = {'GPT2Model': 'GPT2Model', 'GPT2LMHeadModel': 'GPT2LMHeadModel',
                 'GPT2ForSequenceClassification': 'GPT2ForSequenceClassification'}


def hf_config(model) -> dict:
  cfg = dataclasses.asdict(model.config)
  cls = type(model).__name__
  cfg.update(model_type='gpt2', architectures=[ARCHITECTURES.get(cls, cls)], tie_word_embeddings=True)
  score = getattr(model, 'score', None)
  if score is not None:
    n = score.out_features
    cfg.update(id2label={str(i): f'LABEL_{i}' for i in range(n)}, label2id={f'LABEL_{i}': i for i in range(n)})
    if n == 1:
      cfg['problem_type'] = 'regression'
  return cfg
