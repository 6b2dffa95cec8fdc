"""ResNet v1.5 (BatchNorm; torchvision / transformers layout) and ResNetV2 / BiT (GroupNorm + WS).

v1.5 puts the bottleneck's stride on the 3x3 conv. Padding follows PyTorch (k // 2 on each side) so
weights convert 1:1 from `transformers.ResNetModel`. BatchNorm uses the batch statistics of the
*global* batch under a data-parallel mesh: the mean over a sharded axis is an all-reduce under jit.
"""
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ftjax import models
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


class ResNet(nnx.Module):
  """Stem -> 4 stages -> global average pool (`embed`) -> `head` (a named Linear, swappable)."""

  def __init__(self, depth: int = 50, *, num_classes: int = 1000, width: float = 1.0, version: str = 'v1.5',
               stem: str = 'imagenet', in_channels: int = 3, zero_init_residual: bool = True,
               stages: Sequence[int] | None = None, dtype=jnp.float32, rngs: nnx.Rngs):
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
    self.v2, self.small_stem, self.dtype = v2, stem == 'small', dtype
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

  def embed(self, x):
    """Pooled pre-logit features, float32."""
    x = self.stem_conv(x.astype(self.dtype))
    if self.stem_norm is not None:
      x = nnx.relu(self.stem_norm(x))
    if not self.small_stem:
      x = nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for stage in self.stages:
      for blk in stage:
        x = blk(x)
    if self.final_norm is not None:
      x = nnx.relu(self.final_norm(x))
    return x.mean(axis=(1, 2)).astype(jnp.float32)

  def __call__(self, x, rngs=None):
    feats = self.embed(x)
    return feats if self.head is None else self.head(feats).astype(jnp.float32)


def build(cfg: dict, rngs: nnx.Rngs) -> ResNet:
  cfg = dict(cfg)
  dt = models.dtype(cfg.pop('dtype', 'float32'))
  try:
    return ResNet(**cfg, dtype=dt, rngs=rngs)
  except TypeError as e:
    raise UserError(f'model config for resnet: {e}') from None
