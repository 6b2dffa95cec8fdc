"""BERT encoder and heads with transformers' BertConfig semantics and module names.

Module paths mirror transformers' (`bert.encoder.layer.3.attention.self.query`, `cls.predictions...`),
so HF checkpoints convert by renaming leaves alone (ftjax/hf.py). Attention is
`jax.nn.dot_product_attention` with the padding mask (model.attention: cuDNN's fused kernel on GPU in
half precision, else XLA's); with attention dropout active in training it is an explicit softmax
(dot_product_attention has no dropout). model.remat rematerialises each layer (models.REMAT).
model.scan_layers stacks the layers' parameters ([num_hidden_layers, ...] under `encoder.layer`, no index)
and runs them with nnx.scan: one layer to trace and compile whatever the depth.
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

ACTS = {'gelu': lambda x: jax.nn.gelu(x, approximate=False), 'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
        'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True), 'relu': jax.nn.relu,
        'silu': jax.nn.silu, 'swish': jax.nn.silu, 'tanh': jnp.tanh}


class Dropout(nnx.Dropout):
  """nnx.Dropout drawing 16 random bits per element instead of 32: half the threefry work, which was
  most of dropout's cost in a CPU BERT step. The keep probability is quantised to 1/65536 and the
  scale uses the quantised value, so the output's expectation is exact."""

  def __call__(self, inputs, *, deterministic=None, rngs=None):
    det = self.deterministic if deterministic is None else deterministic
    if not det and 0 < self.rate < 1 and rngs is None and self.rngs is None:   # a sub-module called alone
      raise UserError(no_rngs('this BERT Dropout layer', self.rate))
    if (det or self.rate in (0.0, 1.0) or self.broadcast_dims or not isinstance(rngs, nnx.Rngs)
        or inputs.shape[-1] % 2):
      return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
    bits = jax.random.bits(rngs[self.rng_collection](), (*inputs.shape[:-1], inputs.shape[-1] // 2), jnp.uint32)
    u16 = jnp.stack([bits & 0xFFFF, bits >> 16], axis=-1).reshape(inputs.shape)
    threshold = round((1.0 - self.rate) * 65536)
    return jnp.where(u16 < threshold, inputs * (65536 / threshold), jnp.zeros_like(inputs))


def no_rngs(what: str, rate: float) -> str:
  return (f'{what} is in training mode (dropout {rate:g}) and was called without rngs; call model.eval() '
          'for inference, or pass rngs=nnx.Rngs(dropout=<seed>) to train')


def require_rngs(model: nnx.Module, dropouts, rngs):
  """A model in training mode with active dropout (among `dropouts`, its Dropout layers) needs dropout
  keys. Python only: under jit it runs once, at trace time (`deterministic` and `rate` are static), and
  not at all when rngs are given. Every family with Dropout layers checks through this."""
  if rngs is not None:
    return
  rates = [m.rate for m in dropouts if not m.deterministic and 0 < m.rate < 1 and m.rngs is None]
  if rates:
    raise UserError(no_rngs(type(model).__name__, max(rates)))


def check_rngs(model: nnx.Module, rngs):
  require_rngs(model, _dropouts(model), rngs)


def _dropouts(model):
  """Every Dropout of a BERT model or head, by attribute (microseconds; nnx.iter_graph takes ~15 ms
  on BERT-base, which an eager call would pay each time)."""
  base = model.bert if hasattr(model, 'bert') else model
  yield base.embeddings.dropout
  enc = base.encoder
  for layer in [enc.layer] if enc.scan_layers else enc.layer:
    yield from (layer.attention.self.dropout, layer.attention.output.dropout, layer.output.dropout)
  if isinstance(getattr(model, 'dropout', None), nnx.Dropout):
    yield model.dropout


@dataclasses.dataclass
class BertConfig:
  """transformers.BertConfig's fields and defaults (bert-base-uncased)."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = 'gelu'
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  classifier_dropout: float | None = None

  @classmethod
  def from_dict(cls, d: dict, where: str = 'model config for bert', required: tuple = ()) -> 'BertConfig':
    """Known fields of `d` (a config.json's dict, or model-config overrides), each checked for its type
    and range; `where` names the source in errors, `required` lists fields it must hold."""
    names = {f.name for f in dataclasses.fields(cls)}
    for k in required:
      if k not in d:
        raise UserError(f'{where}: {k} is missing; expected {_FIELD_CHECKS[k][2]}')
    for k, v in d.items():
      if k in _FIELD_CHECKS:
        types, ok, expected = _FIELD_CHECKS[k]
        if isinstance(v, bool) or not isinstance(v, types) or not ok(v):
          raise UserError(f'{where}: {k}={v!r} ({type(v).__name__}); expected {expected}')
    cfg = cls(**{k: v for k, v in d.items() if k in names})
    if cfg.hidden_act not in ACTS:
      raise UserError(f'{where}: hidden_act={cfg.hidden_act!r} is not supported; choose one of {", ".join(ACTS)}')
    if cfg.hidden_size % cfg.num_attention_heads:
      raise UserError(f'{where}: hidden_size={cfg.hidden_size} is not divisible by '
                      f'num_attention_heads={cfg.num_attention_heads}')
    return cfg


_INT, _NUM = (numbers.Integral,), (numbers.Real,)      # numpy scalars too; bools are refused apart
_FIELD_CHECKS = {      # field: (accepted types, valid value, what is expected)
    'vocab_size': (_INT, lambda v: v >= 1, 'an integer >= 1 (the vocabulary size)'),
    'hidden_size': (_INT, lambda v: v >= 1, 'an integer >= 1'),
    'num_hidden_layers': (_INT, lambda v: v >= 0, 'an integer >= 0'),
    'num_attention_heads': (_INT, lambda v: v >= 1, 'an integer >= 1 that divides hidden_size'),
    'intermediate_size': (_INT, lambda v: v >= 1, 'an integer >= 1'),
    'hidden_act': ((str,), lambda v: True, f'a string, one of {", ".join(ACTS)}'),
    'hidden_dropout_prob': (_NUM, lambda v: 0 <= v <= 1, 'a number in [0, 1]'),
    'attention_probs_dropout_prob': (_NUM, lambda v: 0 <= v <= 1, 'a number in [0, 1]'),
    'max_position_embeddings': (_INT, lambda v: v >= 1, 'an integer >= 1'),
    'type_vocab_size': (_INT, lambda v: v >= 1, 'an integer >= 1'),
    'initializer_range': (_NUM, lambda v: v >= 0, 'a number >= 0'),
    'layer_norm_eps': (_NUM, lambda v: v > 0, 'a number > 0'),
    'pad_token_id': ((numbers.Integral, type(None)), lambda v: True, 'an integer or null'),
    'classifier_dropout': ((numbers.Real, type(None)), lambda v: v is None or 0 <= v <= 1, 'null or a number in [0, 1]'),
}
# What a config.json must state: the architecture's shapes (a default would only fail later, as a
# shape mismatch against the weights).
REQUIRED_IN_FILE = ('vocab_size', 'hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size')


@flax.struct.dataclass
class BertOutput:
  """What every BERT model returns, as transformers' ModelOutput classes: the fields its head fills,
  None for the rest, so callers read `out.logits` whatever the head."""
  last_hidden_state: jax.Array | None = None
  pooler_output: jax.Array | None = None
  logits: jax.Array | None = None                    # classification, token classification, MLM
  seq_relationship_logits: jax.Array | None = None   # NSP (head=pretraining)
  start_logits: jax.Array | None = None              # QA
  end_logits: jax.Array | None = None


class _Ctx:
  """What every sub-module needs: config, compute dtype, initialisers."""

  def __init__(self, cfg: BertConfig, dtype, attention='auto', remat='', scan_layers=False):
    if attention not in ('auto', 'xla', 'cudnn'):
      raise UserError(f"bert attention={attention!r}; choose auto, xla or cudnn")
    models.remat_policy(remat)      # validates the name
    self.cfg, self.dtype, self.remat, self.scan_layers = cfg, dtype, remat, bool(scan_layers)
    self.init = nnx.initializers.normal(cfg.initializer_range)
    # cuDNN's fused (flash) attention: GPU, half precision, no attention dropout (it has none).
    cudnn_ok = jax.default_backend() == 'gpu' and dtype in (jnp.bfloat16, jnp.float16)
    if attention == 'cudnn' and not cudnn_ok:
      raise UserError('bert attention=cudnn needs a GPU and model.dtype bfloat16 or float16')
    if attention == 'cudnn' and cfg.attention_probs_dropout_prob:
      raise UserError('bert attention=cudnn has no attention dropout: set attention_probs_dropout_prob=0')
    self.attention = 'cudnn' if attention == 'cudnn' or (attention == 'auto' and cudnn_ok) else 'xla'

  def dense(self, din, dout, rngs):
    return nnx.Linear(din, dout, dtype=self.dtype, kernel_init=self.init, rngs=rngs)

  def norm(self, rngs):
    return nnx.LayerNorm(self.cfg.hidden_size, epsilon=self.cfg.layer_norm_eps, dtype=self.dtype,
                         use_fast_variance=False, rngs=rngs)

  def embed(self, n, rngs):
    return nnx.Embed(n, self.cfg.hidden_size, dtype=self.dtype, embedding_init=self.init, rngs=rngs)


class BertEmbeddings(nnx.Module):
  def __init__(self, c: _Ctx, rngs):
    self.word_embeddings = c.embed(c.cfg.vocab_size, rngs)
    self.position_embeddings = c.embed(c.cfg.max_position_embeddings, rngs)
    self.token_type_embeddings = c.embed(c.cfg.type_vocab_size, rngs)
    self.LayerNorm = c.norm(rngs)
    self.dropout = Dropout(c.cfg.hidden_dropout_prob)

  def __call__(self, input_ids, token_type_ids, rngs=None):
    pos = jnp.arange(input_ids.shape[1])[None]
    x = self.word_embeddings(input_ids) + self.position_embeddings(pos) + self.token_type_embeddings(token_type_ids)
    return self.dropout(self.LayerNorm(x), rngs=rngs)


class BertSelfAttention(nnx.Module):
  def __init__(self, c: _Ctx, rngs):
    h = c.cfg.hidden_size
    self.num_heads, self.head_dim = c.cfg.num_attention_heads, h // c.cfg.num_attention_heads
    self.implementation = c.attention
    self.query, self.key, self.value = (c.dense(h, h, rngs) for _ in range(3))
    self.dropout = Dropout(c.cfg.attention_probs_dropout_prob)

  def __call__(self, x, mask, rngs=None):
    b, t, _ = x.shape
    q, k, v = (parallel.constrain(f(x).reshape(b, t, self.num_heads, self.head_dim), ('batch', None, 'heads', None))
               for f in (self.query, self.key, self.value))
    if self.dropout.deterministic or self.dropout.rate == 0:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
    else:
      logits = jnp.einsum('bqnh,bknh->bnqk', q, k).astype(jnp.float32) / jnp.sqrt(self.head_dim)
      probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1).astype(v.dtype)
      out = jnp.einsum('bnqk,bknh->bqnh', self.dropout(probs, rngs=rngs), v)
    return out.reshape(b, t, -1)


class BertSelfOutput(nnx.Module):
  def __init__(self, c: _Ctx, din, rngs):
    self.dense = c.dense(din, c.cfg.hidden_size, rngs)
    self.LayerNorm = c.norm(rngs)
    self.dropout = Dropout(c.cfg.hidden_dropout_prob)

  def __call__(self, h, residual, rngs=None):
    return self.LayerNorm(self.dropout(self.dense(h), rngs=rngs) + residual)


class BertAttention(nnx.Module):
  def __init__(self, c: _Ctx, rngs):
    self.self = BertSelfAttention(c, rngs)     # transformers' name for it
    self.output = BertSelfOutput(c, c.cfg.hidden_size, rngs)

  def __call__(self, x, mask, rngs=None):
    return self.output(self.self(x, mask, rngs), x, rngs)


class BertIntermediate(nnx.Module):
  def __init__(self, c: _Ctx, rngs):
    self.dense = c.dense(c.cfg.hidden_size, c.cfg.intermediate_size, rngs)
    self.act = ACTS[c.cfg.hidden_act]

  def __call__(self, x):
    return parallel.constrain(self.act(self.dense(x)), ('batch', None, 'mlp'))


class BertLayer(nnx.Module):
  def __init__(self, c: _Ctx, rngs):
    self.attention = BertAttention(c, rngs)
    self.intermediate = BertIntermediate(c, rngs)
    self.output = BertSelfOutput(c, c.cfg.intermediate_size, rngs)

  def __call__(self, x, mask, rngs=None):
    a = self.attention(x, mask, rngs)
    return self.output(self.intermediate(a), a, rngs)


class BertEncoder(nnx.Module):
  """`layer`: a list of BertLayers, or with scan_layers one BertLayer whose parameters have a leading
  [num_hidden_layers] axis, run by nnx.scan (models.stack / models.scan)."""

  def __init__(self, c: _Ctx, rngs):
    n = c.cfg.num_hidden_layers
    self.scan_layers = c.scan_layers and n > 0
    if self.scan_layers:
      self.layer = models.stack(lambda r: BertLayer(c, r), n, rngs)
    else:
      self.layer = nnx.List([BertLayer(c, rngs) for _ in range(n)])
    self.remat = c.remat

  def __call__(self, x, mask, rngs=None):
    if self.scan_layers:
      def one(layer, x, _, rngs):
        return parallel.constrain(layer(x, mask, rngs), ('batch', None, None)), None
      return models.scan(one, self.layer, x, rngs=rngs, remat_name=self.remat)[0]
    call = models.remat(lambda layer, x, mask, rngs: layer(x, mask, rngs), self.remat)
    for layer in self.layer:
      x = parallel.constrain(call(layer, x, mask, rngs), ('batch', None, None))
    return x


class BertPooler(nnx.Module):
  def __init__(self, c: _Ctx, rngs):
    self.dense = c.dense(c.cfg.hidden_size, c.cfg.hidden_size, rngs)

  def __call__(self, x):
    return jnp.tanh(self.dense(x[:, 0]))


class BertModel(nnx.Module):
  """The encoder: (input_ids, attention_mask, token_type_ids) -> BertOutput."""

  def __init__(self, cfg: BertConfig, *, add_pooling_layer=True, dtype=jnp.float32, attention='auto', remat='',
               scan_layers=False, rngs: nnx.Rngs):
    c = _Ctx(cfg, dtype, attention, remat, scan_layers)
    self.config = cfg
    self.embeddings = BertEmbeddings(c, rngs)
    self.encoder = BertEncoder(c, rngs)
    self.pooler = BertPooler(c, rngs) if add_pooling_layer else None

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, rngs=None) -> BertOutput:
    check_rngs(self, rngs)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    mask = attention_mask.astype(bool)[:, None, None, :]          # [B, 1(heads), 1(queries), keys]
    x = self.encoder(self.embeddings(input_ids, token_type_ids, rngs), mask, rngs)
    return BertOutput(last_hidden_state=x, pooler_output=self.pooler(x) if self.pooler is not None else None)

  def embed(self, input_ids, attention_mask=None, token_type_ids=None, rngs=None):
    """Sentence features for probes: the mean of the last hidden states over real tokens (the
    pooler is untrained after MLM-only pretraining; mean pooling is what sentence encoders use)."""
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    h = self(input_ids, attention_mask, token_type_ids, rngs).last_hidden_state.astype(jnp.float32)
    m = attention_mask.astype(jnp.float32)[..., None]
    return (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


class _EmbedMixin:
  """Heads expose their encoder's features too (linear probe, few-shot, k-NN evaluators)."""

  def embed(self, input_ids, attention_mask=None, token_type_ids=None, rngs=None):
    check_rngs(self, rngs)
    return self.bert.embed(input_ids, attention_mask, token_type_ids, rngs)


class BertPredictionHeadTransform(nnx.Module):
  def __init__(self, c: _Ctx, rngs):
    self.dense = c.dense(c.cfg.hidden_size, c.cfg.hidden_size, rngs)
    self.act = ACTS[c.cfg.hidden_act]
    self.LayerNorm = c.norm(rngs)

  def __call__(self, x):
    return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nnx.Module):
  """Transform, then the decoder tied to the word embeddings, plus its own bias."""

  def __init__(self, c: _Ctx, rngs):
    self.transform = BertPredictionHeadTransform(c, rngs)
    self.bias = nnx.Param(jnp.zeros((c.cfg.vocab_size,), jnp.float32))

  def __call__(self, x, word_embeddings: nnx.Embed):
    h = self.transform(x)
    return (word_embeddings.attend(h) + self.bias[...]).astype(jnp.float32)


class _Heads(nnx.Module):
  """transformers' `cls` module: MLM predictions and/or the NSP classifier."""

  def __init__(self, c: _Ctx, mlm: bool, nsp: bool, rngs):
    self.predictions = BertLMPredictionHead(c, rngs) if mlm else None
    self.seq_relationship = c.dense(c.cfg.hidden_size, 2, rngs) if nsp else None


class BertForPreTraining(_EmbedMixin, nnx.Module):
  """MLM (+ NSP when nsp=True). `masked_positions` [B, P] limits the vocabulary projection to those
  positions, which is most of the MLM head's cost."""

  def __init__(self, cfg: BertConfig, *, nsp=False, dtype=jnp.float32, rngs: nnx.Rngs, **encoder):
    c = _Ctx(cfg, dtype)
    self.bert = BertModel(cfg, add_pooling_layer=nsp, dtype=dtype, rngs=rngs, **encoder)
    self.cls = _Heads(c, mlm=True, nsp=nsp, rngs=rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, masked_positions=None, rngs=None):
    check_rngs(self, rngs)
    out = self.bert(input_ids, attention_mask, token_type_ids, rngs)
    h = out.last_hidden_state
    if masked_positions is not None:
      h = jnp.take_along_axis(h, masked_positions[..., None], axis=1)
    logits = self.cls.predictions(h, self.bert.embeddings.word_embeddings)
    nsp = self.cls.seq_relationship(out.pooler_output).astype(jnp.float32) if self.cls.seq_relationship else None
    return BertOutput(logits=logits, seq_relationship_logits=nsp)


class BertForSequenceClassification(_EmbedMixin, nnx.Module):
  """Pooled [CLS] -> dropout -> classifier. num_labels=1 is regression. pooling='mean' classifies the
  mean of the last hidden states instead (no pooler): the better start from an MLM-only encoder,
  whose [CLS] position nothing trained; transformers' class has no such option."""

  def __init__(self, cfg: BertConfig, *, num_labels=2, pooling='cls', dtype=jnp.float32, rngs: nnx.Rngs, **encoder):
    if pooling not in ('cls', 'mean'):
      raise UserError(f"bert pooling={pooling!r}; choose 'cls' (transformers' pooler) or 'mean'")
    c = _Ctx(cfg, dtype)
    self.pooling = pooling
    self.bert = BertModel(cfg, add_pooling_layer=pooling == 'cls', dtype=dtype, rngs=rngs, **encoder)
    p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
    self.dropout = Dropout(p)
    self.classifier = c.dense(cfg.hidden_size, num_labels, rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, rngs=None):
    check_rngs(self, rngs)
    if self.pooling == 'mean':
      pooled = self.bert.embed(input_ids, attention_mask, token_type_ids, rngs)
    else:
      pooled = self.bert(input_ids, attention_mask, token_type_ids, rngs).pooler_output
    return BertOutput(logits=self.classifier(self.dropout(pooled, rngs=rngs)).astype(jnp.float32))


class BertForTokenClassification(_EmbedMixin, nnx.Module):
  def __init__(self, cfg: BertConfig, *, num_labels=2, dtype=jnp.float32, rngs: nnx.Rngs, **encoder):
    c = _Ctx(cfg, dtype)
    self.bert = BertModel(cfg, add_pooling_layer=False, dtype=dtype, rngs=rngs, **encoder)
    p = cfg.classifier_dropout if cfg.classifier_dropout is not None else cfg.hidden_dropout_prob
    self.dropout = Dropout(p)
    self.classifier = c.dense(cfg.hidden_size, num_labels, rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, rngs=None):
    check_rngs(self, rngs)
    h = self.bert(input_ids, attention_mask, token_type_ids, rngs).last_hidden_state
    return BertOutput(logits=self.classifier(self.dropout(h, rngs=rngs)).astype(jnp.float32))


class BertForQuestionAnswering(_EmbedMixin, nnx.Module):
  """Span QA: per-token start and end logits."""

  def __init__(self, cfg: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs, **encoder):
    c = _Ctx(cfg, dtype)
    self.bert = BertModel(cfg, add_pooling_layer=False, dtype=dtype, rngs=rngs, **encoder)
    self.qa_outputs = c.dense(cfg.hidden_size, 2, rngs)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None, rngs=None):
    check_rngs(self, rngs)
    h = self.bert(input_ids, attention_mask, token_type_ids, rngs).last_hidden_state
    logits = self.qa_outputs(h).astype(jnp.float32)
    return BertOutput(start_logits=logits[..., 0], end_logits=logits[..., 1])


HEADS = {'none': BertModel, 'mlm': BertForPreTraining, 'pretraining': BertForPreTraining,
         'classification': BertForSequenceClassification, 'token_classification': BertForTokenClassification,
         'qa': BertForQuestionAnswering}


Output = BertOutput      # what every model of the family returns (protocols.ModelFamily)


def defaults() -> dict:
  """Every key `build` reads beyond models.COMMON. The architecture fields are transformers.BertConfig's:
  None takes model.config's value, else BertConfig's default (bert-base-uncased, in the comment)."""
  arch = {f.name: placeholder(_FIELD_TYPES[f.name]) for f in dataclasses.fields(BertConfig)}
  return dict(
      head='none',            # none | mlm | pretraining (MLM + NSP) | classification | token_classification | qa
      num_labels=2,           # classification heads; 1 = regression
      pooling='cls',          # classification: cls (transformers' pooler) | mean (of the last hidden states)
      attention='auto',       # auto | xla | cudnn (fused, GPU in half precision)
      scan_layers=False,      # stack the layers' parameters ([num_hidden_layers, ...] under encoder.layer) and run
                              # them with nnx.scan: compile time flat in depth; no LoRA, no optim.layer_decay
      **arch)


_FIELD_TYPES = {f.name: f.type if isinstance(f.type, type) else float      # float | None: classifier_dropout
                for f in dataclasses.fields(BertConfig)}


def _bert_config(cfg: dict) -> BertConfig:
  """BertConfig from model.config (a transformers config.json or directory, or '') overridden by the
  fields the model config sets."""
  base: dict[str, Any] = {}
  if cfg['config']:
    base = hub.read_config(cfg['config'], expect='bert')
    BertConfig.from_dict(base, where=hub.config_file(cfg['config']), required=REQUIRED_IN_FILE)
  fields = {f.name: cfg[f.name] for f in dataclasses.fields(BertConfig) if cfg.get(f.name) is not None}
  return BertConfig.from_dict({**base, **fields})


def vocab_size(cfg: dict) -> int:
  return _bert_config(cfg).vocab_size


def build(cfg: dict, rngs: nnx.Rngs) -> nnx.Module:
  """cfg: models.COMMON's keys (but name, lora) and defaults()'s, every one present (models.resolve)."""
  head, pooling = cfg['head'], cfg['pooling']
  if head not in HEADS:
    raise UserError(f'model.head={head!r}; choose one of {", ".join(HEADS)}')
  if pooling != 'cls' and head != 'classification':
    raise UserError(f'model.pooling={pooling!r} applies to head=classification only')
  kw = dict(dtype=models.dtype(cfg['dtype']), rngs=rngs, attention=cfg['attention'], remat=cfg['remat'],
            scan_layers=bool(cfg['scan_layers']))
  if head in ('classification', 'token_classification'):
    kw['num_labels'] = cfg['num_labels']
  if head == 'classification':
    kw['pooling'] = pooling
  if head == 'pretraining':
    kw['nsp'] = True
  return HEADS[head](_bert_config(cfg), **kw)


# ---- transformers layout (ftjax/hf.py) ----------------------------------------------------------
HF_PREFIX = 'bert.'
ARCHITECTURES = {'BertModel': 'BertModel', 'BertForPreTraining': 'BertForMaskedLM',
                 'BertForSequenceClassification': 'BertForSequenceClassification',
                 'BertForTokenClassification': 'BertForTokenClassification',
                 'BertForQuestionAnswering': 'BertForQuestionAnswering'}


def hf_name(path: tuple) -> tuple[str, str | None]:
  """ftjax param path -> (transformers name, layout): module paths are transformers' already."""
  *mods, leaf = (str(p) for p in path)
  if leaf == 'kernel':
    return '.'.join(mods + ['weight']), 'T'
  if leaf in ('embedding', 'scale'):
    return '.'.join(mods + ['weight']), None
  return '.'.join(mods + [leaf]), None


# A parameter of stacked layers (model.scan_layers): `encoder.layer.` not followed by a layer index.
_STACKED = re.compile(r'(^|\.)encoder\.layer\.(?!\d+\.)')


def layer_index_at(path: tuple) -> int | None:
  """Where a layer index goes in the path of a stacked parameter (model.scan_layers), whose leading axis
  is the layer; None for any other. ftjax/hf.py splits such parameters into transformers' per-layer
  tensors (`encoder.layer.<i>.`) and stacks them back."""
  return models.stacked_index(_STACKED, path)


def lr_layer(name: str) -> int | None:
  """Depth for layer-wise lr decay: embeddings 0, encoder layer i -> i + 1, pooler and heads on top."""
  if re.match(r'(bert\.)?embeddings\.', name):
    return 0
  if _STACKED.search(name):
    raise UserError(f'optim.layer_decay reads the layer from parameter names, and {name} holds every layer '
                    '(model.scan_layers=True): set model.scan_layers=False or optim.layer_decay=1')
  m = re.match(r'(bert\.)?encoder\.layer\.(\d+)\.', name)
  return int(m.group(2)) + 1 if m else None


# Logical axes of every parameter (ftjax/parallel.py maps them to mesh axes through config.sharding_rules):
# Megatron-style tensor parallelism splits Q/K/V and the first MLP matrix by output, the projections back
# by input; heads' dense layers split their input like the hidden size. A parameter no pattern names is
# an error, not silently replicated.
_KERNEL_AXES = ((r'attention\.self\.(query|key|value)$', ('embed', 'heads')),
                (r'attention\.output\.dense$', ('heads', 'embed')),
                (r'intermediate\.dense$', ('embed', 'mlp')),
                (r'layer\.(\d+\.)?output\.dense$', ('mlp', 'embed')),
                (r'(pooler\.dense|predictions\.transform\.dense|seq_relationship|classifier|qa_outputs)$',
                 ('embed', None)))


def logical_axes(name: str, ndim: int) -> tuple:
  """A stacked parameter's (model.scan_layers) are its layer's, after None for the layer axis."""
  if _STACKED.search(name):
    return (None, *_layer_axes(name))
  return _layer_axes(name)


def _layer_axes(name: str) -> tuple:
  module, leaf = name.rsplit('.', 1)
  if leaf == 'embedding':
    return ('vocab', 'embed') if 'word_embeddings' in module else (None, 'embed')
  if module.endswith('LayerNorm') and leaf in ('scale', 'bias'):
    return ('embed',)
  if leaf == 'bias' and module.endswith('cls.predictions'):
    return ('vocab',)
  kernel = next((axes for pat, axes in _KERNEL_AXES if re.search(pat, module)), None)
  if kernel is None or leaf not in ('kernel', 'bias', 'lora_a', 'lora_b'):
    raise ValueError(f'bert: no logical axes for parameter {name}; name them in bert._KERNEL_AXES')
  return {'kernel': kernel, 'bias': (kernel[1],), 'lora_a': (kernel[0], None), 'lora_b': (None, kernel[1])}[leaf]


def hf_config(model) -> dict:
  base = model if isinstance(model, BertModel) else model.bert
  cfg = dataclasses.asdict(base.config)
  cls = type(model).__name__
  cfg.update(model_type='bert', architectures=[ARCHITECTURES.get(cls, cls)])
  if getattr(model, 'pooling', 'cls') != 'cls':
    raise UserError("a pooling='mean' classifier has no transformers equivalent; export model.bert, the encoder")
  classifier = getattr(model, 'classifier', None)
  if classifier is not None:
    n = classifier.out_features
    cfg.update(id2label={str(i): f'LABEL_{i}' for i in range(n)}, label2id={f'LABEL_{i}': i for i in range(n)})
    if n == 1:
      cfg['problem_type'] = 'regression'
  return cfg
