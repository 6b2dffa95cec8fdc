"""LoRA adapters (Hu et al. 2021) on chosen dense layers, and merge-back for export.

`apply` swaps every nnx.Linear whose dotted path matches `targets` for a LoRALinear that keeps the
layer's own `kernel` and `bias` (same names, so pretrained weights still load by name) and adds
`lora_a` [in, r] and `lora_b` [r, out], with y = x W + b + (alpha / r) x A B. B starts at zero: the
adapted model equals the pretrained one at step 0. Train the adapters alone with
optim.trainable='lora_' (plus the head, e.g. 'lora_|classifier'). hf.save_adapters / hf.load_adapters carry
the adapters alone in peft's format, for peft.PeftModel on transformers' model of the same base weights.
"""
import re

import jax.numpy as jnp
from flax import nnx

from ftjax.errors import UserError


class LoRALinear(nnx.Module):

  def __init__(self, base: nnx.Linear, rank: int, alpha: float, *, rngs: nnx.Rngs):
    self.kernel, self.bias = base.kernel, base.bias
    self.in_features, self.out_features, self.dtype = base.in_features, base.out_features, base.dtype
    self.lora_a = nnx.Param(nnx.initializers.he_uniform()(rngs.params(), (base.in_features, rank), jnp.float32))
    self.lora_b = nnx.Param(jnp.zeros((rank, base.out_features), jnp.float32))
    self.scale = alpha / rank

  def __call__(self, x):
    dt = self.dtype or x.dtype
    x = x.astype(dt)
    y = x @ self.kernel[...].astype(dt)
    if self.bias is not None:
      y = y + self.bias[...].astype(dt)
    return y + (x @ self.lora_a[...].astype(dt)) @ (self.lora_b[...] * self.scale).astype(dt)


def _replace(model, fn):
  """Replaces each sub-module m for which fn(path, m) returns a module; returns the paths replaced."""
  done = []
  for path, m in list(nnx.iter_modules(model)):
    new = fn('.'.join(map(str, path)), m) if path else None
    if new is None:
      continue
    parent = model
    for p in path[:-1]:
      parent = parent[p] if isinstance(parent, nnx.List) else getattr(parent, p)
    if isinstance(parent, nnx.List):
      parent[path[-1]] = new
    else:
      setattr(parent, path[-1], new)
    done.append('.'.join(map(str, path)))
  return done


def apply(model, *, rank: int, alpha: float = 0.0, targets: str = '', rngs: nnx.Rngs):
  """Adds rank-`rank` adapters to the nnx.Linear layers whose path matches the regex `targets`."""
  if rank <= 0:
    return model
  if not targets:
    raise UserError('model.lora.rank > 0 needs model.lora.targets, a regex over layer paths, e.g. '
                    r'"attention\.self\.(query|value)"')
  done = _replace(model, lambda name, m: LoRALinear(m, rank, alpha or rank, rngs=rngs)
                  if type(m) is nnx.Linear and re.search(targets, name) else None)
  if not done:
    linears = [('.'.join(map(str, p))) for p, m in nnx.iter_modules(model) if type(m) is nnx.Linear]
    raise UserError(f'model.lora.targets={targets!r} matches no dense layer; they are: {", ".join(linears[:8])}'
                    + (' ...' if len(linears) > 8 else ''))
  return model


def merge(model):
  """Folds every adapter into its kernel (W + (alpha / r) A B) and restores a plain nnx.Linear, in
  place: the result has the original architecture, for export or serving. Returns the model."""
  def fold(name, m):
    if not isinstance(m, LoRALinear):
      return None
    lin = nnx.Linear(m.in_features, m.out_features, use_bias=m.bias is not None, dtype=m.dtype, rngs=nnx.Rngs(0))
    lin.kernel[...] = m.kernel[...] + m.scale * (m.lora_a[...] @ m.lora_b[...])
    if m.bias is not None:
      lin.bias[...] = m.bias[...]
    return lin
  _replace(model, fold)
  return model


def has_adapters(model) -> bool:
  return any(isinstance(m, LoRALinear) for _, m in nnx.iter_modules(model))
