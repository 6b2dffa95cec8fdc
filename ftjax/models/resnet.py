"""ResNet v1.5 (BatchNorm; torchvision / transformers layout) and ResNetV2 / BiT (GroupNorm + WS).

v1.5 puts the bottleneck's stride on the 3x3 conv. Padding follows PyTorch (k // 2 on each side) so
weights convert 1:1 from `transformers.ResNetModel`. BatchNorm uses the batch statistics of the
*global* batch under a data-parallel mesh: the mean over a sharded axis is an all-reduce under jit.
"""
import math
import re
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections.config_dict import placeholder

from ftjax import hub, models, parallel
from ftjax.errors import UserError

STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
he_out = nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _pad(k):
  return ((k // 2, k // 2), (k // 2, k // 2))


class Conv(nnx.Module):
  """Bias-free conv with PyTorch padding; `standardize` gives BiT's weight-standardised conv."""

  def __init__(self, cin, cout, k, stride=1, *, standardize=False, dtype=jnp.float32, rngs):
    self.kernel = nnx.Param(he_out(rngs.params(), (k, k, cin, cout), jnp.float32))
    self.stride, self.k, self.standardize, self.dtype = stride, k, standardize, dtype

  def __call__(self, x):
    w = self.kernel[...]
    if self.standardize:
      mean = w.mean(axis=(0, 1, 2), keepdims=True)
      w = (w - mean) * jax.lax.rsqrt(w.var(axis=(0, 1, 2), keepdims=True) + 1e-10)
    if self.k == 1:   # a matmul: XLA:CPU wrapped 1x1 convs' gradients in layout transposes (-30% step time)
      x = x[:, ::self.stride, ::self.stride] if self.stride > 1 else x
      return jnp.einsum('bhwc,co->bhwo', x.astype(self.dtype), w[0, 0].astype(self.dtype))
    return jax.lax.conv_general_dilated(
        x.astype(self.dtype), w.astype(self.dtype), (self.stride, self.stride), _pad(self.k),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


# Two-pass variance (use_fast_variance=False): E[x^2] - E[x]^2 lost ~1e-3 to cancellation here, enough
# to make outputs depend on how a batch is split.
def _bn(c, dtype, rngs, zero=False):
  return nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, dtype=dtype, use_fast_variance=False, rngs=rngs,
                       scale_init=nnx.initializers.zeros if zero else nnx.initializers.ones)


def _gn(c, dtype, rngs):
  return nnx.GroupNorm(c, num_groups=math.gcd(32, c), epsilon=1e-5, dtype=dtype, use_fast_variance=False,
                       rngs=rngs)


class BasicBlock(nnx.Module):
  expansion = 1

  def __init__(self, cin, width, stride, *, dtype, zero_init, rngs):
    cout = width
    self.conv1 = Conv(cin, width, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(width, dtype, rngs)
    self.conv2 = Conv(width, cout, 3, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(cout, dtype, rngs, zero=zero_init)
    self.proj = Conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs) if stride != 1 or cin != cout else None
    self.proj_bn = _bn(cout, dtype, rngs) if self.proj is not None else None

  def __call__(self, x):
    skip = self.proj_bn(self.proj(x)) if self.proj is not None else x
    y = nnx.relu(self.bn1(self.conv1(x)))
    return nnx.relu(skip + self.bn2(self.conv2(y)))


class Bottleneck(nnx.Module):
  expansion = 4

  def __init__(self, cin, width, stride, *, dtype, zero_init, rngs):
    cout = width * 4
    self.conv1 = Conv(cin, width, 1, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(width, dtype, rngs)
    self.conv2 = Conv(width, width, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(width, dtype, rngs)
    self.conv3 = Conv(width, cout, 1, dtype=dtype, rngs=rngs)
    self.bn3 = _bn(cout, dtype, rngs, zero=zero_init)
    self.proj = Conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs) if stride != 1 or cin != cout else None
    self.proj_bn = _bn(cout, dtype, rngs) if self.proj is not None else None

  def __call__(self, x):
    skip = self.proj_bn(self.proj(x)) if self.proj is not None else x
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    return nnx.relu(skip + self.bn3(self.conv3(y)))


class PreActBottleneck(nnx.Module):
  """ResNetV2 / BiT unit: GroupNorm -> ReLU -> weight-standardised conv, stride on the 3x3."""
  expansion = 4

  def __init__(self, cin, width, stride, *, dtype, zero_init, rngs):
    cout = width * 4
    self.gn1 = _gn(cin, dtype, rngs)
    self.conv1 = Conv(cin, width, 1, standardize=True, dtype=dtype, rngs=rngs)
    self.gn2 = _gn(width, dtype, rngs)
    self.conv2 = Conv(width, width, 3, stride, standardize=True, dtype=dtype, rngs=rngs)
    self.gn3 = _gn(width, dtype, rngs)
    self.conv3 = Conv(width, cout, 1, standardize=True, dtype=dtype, rngs=rngs)
    self.proj = (Conv(cin, cout, 1, stride, standardize=True, dtype=dtype, rngs=rngs)
                 if stride != 1 or cin != cout else None)

  def __call__(self, x):
    x = nnx.relu(self.gn1(x))
    skip = self.proj(x) if self.proj is not None else x
    y = self.conv1(x)
    y = self.conv2(nnx.relu(self.gn2(y)))
    y = self.conv3(nnx.relu(self.gn3(y)))
    return skip + y


class Projector(nnx.Module):
  """SimCLR's projection MLP: (Linear -> BatchNorm -> ReLU) per hidden size, then Linear."""

  def __init__(self, din: int, sizes: Sequence[int], *, dtype, rngs):
    self.layers = nnx.List([nnx.Linear(a, b, use_bias=i == len(sizes) - 1, dtype=dtype, rngs=rngs)
                            for i, (a, b) in enumerate(zip((din, *sizes[:-1]), sizes))])
    self.norms = nnx.List([_bn(b, dtype, rngs) for b in sizes[:-1]])

  def __call__(self, x):
    for lin, bn in zip(self.layers[:-1], self.norms):
      x = nnx.relu(bn(lin(x)))
    return self.layers[-1](x).astype(jnp.float32)


@flax.struct.dataclass
class ResNetOutput:
  """What a ResNet returns, as transformers' ResNet outputs: pooled features and, with a head, logits."""
  pooler_output: jax.Array
  logits: jax.Array | None = None


class ResNet(nnx.Module):
  """Stem -> 4 stages -> global average pool (`embed`) -> `head` (a named Linear, swappable).
  `projection` (hidden..., out) adds a `projector` MLP for contrastive pretraining (`project`).
  `remat` rematerialises each block in the backward pass (models.REMAT)."""

  def __init__(self, depth: int = 50, *, num_classes: int = 1000, width: float = 1.0, version: str = 'v1.5',
               stem: str = 'imagenet', in_channels: int = 3, zero_init_residual: bool = True,
               stages: Sequence[int] | None = None, projection: Sequence[int] = (), remat: str = '',
               dtype=jnp.float32, rngs: nnx.Rngs):
    if version not in ('v1.5', 'v2'):
      raise UserError(f'resnet version={version!r}; choose v1.5 (BatchNorm) or v2 (BiT: GroupNorm + WS)')
    if stem not in ('imagenet', 'small'):
      raise UserError(f'resnet stem={stem!r}; choose imagenet (7x7/2 + max-pool) or small (3x3/1, for <= 64 px)')
    if stages is None and depth not in STAGES:
      raise UserError(f'resnet depth={depth}; choose one of {sorted(STAGES)} or give `stages`')
    stages = tuple(stages or STAGES[depth])
    v2 = version == 'v2'
    block = PreActBottleneck if v2 else (BasicBlock if depth < 50 and not v2 else Bottleneck)
    c0 = max(8, int(round(64 * width)))
    models.remat_policy(remat)      # validates the name
    self.v2, self.small_stem, self.dtype, self.remat = v2, stem == 'small', dtype, remat
    k, s = (3, 1) if self.small_stem else (7, 2)
    self.stem_conv = Conv(in_channels, c0, k, s, standardize=v2, dtype=dtype, rngs=rngs)
    self.stem_norm = None if v2 else _bn(c0, dtype, rngs)
    cin, blocks = c0, []
    for i, n in enumerate(stages):
      w = max(8, int(round(64 * width * 2 ** i)))
      stage = []
      for j in range(n):
        stage.append(block(cin, w, 2 if (j == 0 and i > 0) else 1, dtype=dtype,
                           zero_init=zero_init_residual, rngs=rngs))
        cin = w * block.expansion
      blocks.append(nnx.List(stage))
    self.stages = nnx.List(blocks)
    self.final_norm = _gn(cin, dtype, rngs) if v2 else None
    self.num_features = cin
    self.head = nnx.Linear(cin, num_classes, dtype=dtype, rngs=rngs) if num_classes else None
    self.projector = Projector(cin, tuple(projection), dtype=dtype, rngs=rngs) if projection else None

  def embed(self, x):
    """Pooled pre-logit features, float32."""
    x = self.stem_conv(x.astype(self.dtype))
    if self.stem_norm is not None:
      x = nnx.relu(self.stem_norm(x))
    if not self.small_stem:
      x = nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    call = models.remat(lambda blk, x: blk(x), self.remat)
    for stage in self.stages:
      for blk in stage:
        x = parallel.constrain(call(blk, x), ('batch', None, None, None))
    if self.final_norm is not None:
      x = nnx.relu(self.final_norm(x))
    return x.mean(axis=(1, 2)).astype(jnp.float32)

  def project(self, feats):
    if self.projector is None:
      raise UserError('this ResNet has no projector: set model.projection, e.g. (512, 128)')
    return self.projector(feats)

  def __call__(self, x, rngs=None) -> ResNetOutput:
    feats = self.embed(x)
    return ResNetOutput(pooler_output=feats, logits=None if self.head is None else self.head(feats).astype(jnp.float32))


Output = ResNetOutput      # what every model of the family returns (protocols.ModelFamily)


def defaults() -> dict:
  """Every key `build` reads beyond models.COMMON: ResNet's arguments. None takes model.config's value
  (a transformers ResNet), else the default in the comment."""
  return dict(
      depth=placeholder(int),             # 50; 18 and 34 use basic blocks
      stages=placeholder(tuple),          # blocks per stage; None: the depth's (3, 4, 6, 3) for 50
      width=placeholder(float),           # 1.0; channels 64 * width * 2^stage
      version=placeholder(str),           # 'v1.5' (BatchNorm) | 'v2' (BiT: GroupNorm + weight standardisation)
      stem=placeholder(str),              # 'imagenet' (7x7/2 + max-pool) | 'small' (3x3/1, for <= 64 px)
      in_channels=placeholder(int),       # 3
      num_classes=placeholder(int),       # 1000; 0 = no head (features only)
      zero_init_residual=placeholder(bool),   # True: each block starts as the identity
      projection=placeholder(tuple),      # () ; (hidden..., out): a projector MLP for contrastive pretraining
  )


def build(cfg: dict, rngs: nnx.Rngs) -> ResNet:
  """cfg: models.COMMON's keys (but name, lora) and defaults()'s, every one present (models.resolve)."""
  cfg = dict(cfg)
  dt, remat, path = models.dtype(cfg.pop('dtype')), cfg.pop('remat'), cfg.pop('config')
  args = {k: v for k, v in cfg.items() if v is not None}
  if path:
    args = {**from_hf_config(hub.read_config(path, expect='resnet'), where=hub.config_file(path)), **args}
  return ResNet(**args, remat=remat, dtype=dt, rngs=rngs)


def vocab_size(cfg: dict) -> None:
  return None      # images, no tokens


def lr_layer(name: str) -> int | None:
  """Depth for layer-wise lr decay: stem 0, stage i -> i + 1, final norm and heads on top."""
  if name.startswith('stem_'):
    return 0
  m = re.match(r'stages\.(\d+)\.', name)
  return int(m.group(1)) + 1 if m else None


def logical_axes(name: str, ndim: int) -> tuple:
  """Conv kernels split by output channel, BatchNorm / GroupNorm along it; dense layers (head,
  projector) by input features. A parameter none of these names is an error, not silently replicated."""
  leaf = name.rsplit('.', 1)[-1]
  if ndim == 4 and leaf == 'kernel':
    return (None, None, None, 'conv_out')
  if name.startswith(('head.', 'projector.')):
    return {'kernel': ('embed', None), 'lora_a': ('embed', None), 'lora_b': (None, None), 'bias': (None,),
            'scale': (None,), 'mean': (None,), 'var': (None,)}[leaf]
  if ndim == 1 and leaf in ('scale', 'bias', 'mean', 'var'):     # BatchNorm / GroupNorm, per channel
    return ('conv_out',)
  raise ValueError(f'resnet: no logical axes for parameter {name}; name them in resnet.logical_axes')


# ---- transformers layout (ResNetModel / ResNetForImageClassification; ftjax/hf.py) --------------
HF_PREFIX = 'resnet.'
_LEAVES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def hf_name(path: tuple) -> tuple[str, str | None]:
  """ftjax path -> (transformers name, layout), e.g. stages.1.0.conv2.kernel ->
  resnet.encoder.stages.1.layers.0.layer.1.convolution.weight ('conv': HWIO <-> OIHW)."""
  *mods, leaf = (str(p) for p in path)
  if mods[0] == 'head':
    return f'classifier.1.{"weight" if leaf == "kernel" else leaf}', 'T' if leaf == 'kernel' else None
  if mods[0] == 'stages':
    i, j, part = mods[1], mods[2], mods[3]
    where = f'resnet.encoder.stages.{i}.layers.{j}.'
    if part.startswith('proj'):
      where += 'shortcut.' + ('normalization' if part == 'proj_bn' else 'convolution')
    elif part[:-1] in ('conv', 'bn'):
      where += f'layer.{int(part[-1]) - 1}.' + ('convolution' if part[:-1] == 'conv' else 'normalization')
    else:
      raise UserError(f'{".".join(mods)} has no transformers counterpart (ResNet v1.5 only converts)')
  elif mods[0] in ('stem_conv', 'stem_norm'):
    where = 'resnet.embedder.embedder.' + ('convolution' if mods[0] == 'stem_conv' else 'normalization')
  else:
    raise UserError(f'{".".join(mods)} has no transformers counterpart (ResNet v1.5 only converts)')
  if leaf == 'kernel':
    return where + '.weight', 'conv'
  return f'{where}.{_LEAVES[leaf]}', None


def hf_extra_tensors(sd: dict) -> dict:
  """PyTorch BatchNorm's step counters, so transformers reports no missing keys."""
  return {k.replace('running_mean', 'num_batches_tracked'): np.zeros((), np.int64)
          for k in sd if k.endswith('running_mean')}


def _positive_ints(v) -> bool:
  return isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v)


# field: (valid value, what is expected); depths and hidden_sizes are required, the rest have defaults.
_FIELD_CHECKS = {
    'depths': (_positive_ints, 'a non-empty list of integers >= 1 (blocks per stage)'),
    'hidden_sizes': (_positive_ints, 'a non-empty list of integers >= 1 (channels per stage)'),
    'embedding_size': (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, 'an integer >= 1'),
    'num_channels': (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, 'an integer >= 1'),
    'layer_type': (lambda v: v in ('basic', 'bottleneck'), "'basic' or 'bottleneck'"),
    'hidden_act': (lambda v: isinstance(v, str), "a string ('relu')"),
    'downsample_in_first_stage': (lambda v: isinstance(v, bool), 'a boolean'),
    'downsample_in_bottleneck': (lambda v: isinstance(v, bool), 'a boolean'),
    'id2label': (lambda v: isinstance(v, dict), 'an object {index: label}'),
    'architectures': (lambda v: v is None or (isinstance(v, list) and all(isinstance(a, str) for a in v)),
                      'a list of class names'),
}


def from_hf_config(d: dict, where: str = 'transformers ResNet config') -> dict:
  """transformers ResNetConfig -> ResNet keyword arguments (v1.5: stride on the 3x3, none in stage 1).
  Every field it reads is checked first; `where` (the config.json) names the source in errors."""
  for k in ('depths', 'hidden_sizes'):
    if k not in d:
      raise UserError(f'{where}: {k} is missing; expected {_FIELD_CHECKS[k][1]}')
  for k, (ok, expected) in _FIELD_CHECKS.items():
    if k in d and not ok(d[k]):
      raise UserError(f'{where}: {k}={d[k]!r} ({type(d[k]).__name__}); expected {expected}')
  if d.get('hidden_act', 'relu') != 'relu' or d.get('downsample_in_first_stage') or d.get('downsample_in_bottleneck'):
    raise UserError(f'{where}: only hidden_act=relu, downsample_in_first_stage=False and '
                    'downsample_in_bottleneck=False (ResNet v1.5) convert')
  basic = d.get('layer_type', 'bottleneck') == 'basic'
  width = d.get('embedding_size', 64) / 64
  expansion = 1 if basic else 4
  sizes = [max(8, int(round(64 * width * 2 ** i))) * expansion for i in range(len(d['depths']))]
  if list(d['hidden_sizes']) != sizes:
    raise UserError(f'{where}: hidden_sizes={d["hidden_sizes"]} with embedding_size='
                    f'{d.get("embedding_size", 64)}; ftjax ResNets double the width per stage: {sizes}')
  head = any('ImageClassification' in a for a in d.get('architectures') or [])
  return dict(depth=18 if basic else 50, stages=tuple(d['depths']), width=width, stem='imagenet', version='v1.5',
              in_channels=d.get('num_channels', 3), num_classes=len(d.get('id2label', {})) if head else 0)


def hf_config(model: ResNet) -> dict:
  if model.v2 or model.small_stem:
    raise UserError('only ResNet v1.5 with the imagenet stem has a transformers layout')
  basic = isinstance(model.stages[0][0], BasicBlock)
  hidden = [stage[0].conv2.kernel.shape[-1] if basic else stage[0].conv3.kernel.shape[-1]
            for stage in model.stages]
  cfg = dict(model_type='resnet', num_channels=model.stem_conv.kernel.shape[2],
             embedding_size=model.stem_conv.kernel.shape[3], hidden_sizes=hidden,
             depths=[len(s) for s in model.stages], layer_type='basic' if basic else 'bottleneck',
             hidden_act='relu', downsample_in_first_stage=False, downsample_in_bottleneck=False,
             architectures=['ResNetForImageClassification' if model.head is not None else 'ResNetModel'])
  if model.head is not None:
    n = model.head.out_features
    cfg.update(id2label={str(i): f'LABEL_{i}' for i in range(n)}, label2id={f'LABEL_{i}': i for i in range(n)})
  return cfg
