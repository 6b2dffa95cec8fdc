"""Per-example image ops on uint8 numpy arrays (see ftjax/data/ops.py for the op strings)."""
import math

import numpy as np
from PIL import Image

from ftjax.data.ops import register


def _hw(size):
  return (size, size) if isinstance(size, int) else tuple(size)


def _resize_array(img, hw, method=Image.BILINEAR):
  if img.shape[:2] == tuple(hw):
    return img
  squeeze = img.ndim == 3 and img.shape[-1] == 1
  pil = Image.fromarray(img[..., 0] if squeeze else img)
  out = np.asarray(pil.resize((hw[1], hw[0]), method))
  return out[..., None] if squeeze else out


@register
def resize(size):
  hw = _hw(size)
  return lambda ex, rng: {**ex, 'image': _resize_array(ex['image'], hw)}


@register
def resize_small(size):
  """Resize so the shorter side is `size`, keeping the aspect ratio."""
  def op(ex, rng):
    h, w = ex['image'].shape[:2]
    s = size / min(h, w)
    return {**ex, 'image': _resize_array(ex['image'], (max(1, round(h * s)), max(1, round(w * s))))}
  return op


@register
def central_crop(size):
  th, tw = _hw(size)
  def op(ex, rng):
    img = ex['image']
    h, w = img.shape[:2]
    if h < th or w < tw:
      raise ValueError(f'central_crop({size}) on a {h}x{w} image; resize first')
    y, x = (h - th) // 2, (w - tw) // 2
    return {**ex, 'image': img[y:y + th, x:x + tw]}
  return op


@register
def random_crop(size, pad=0):
  """Zero-pad by `pad` pixels, then crop `size` at a random offset (the CIFAR recipe)."""
  th, tw = _hw(size)
  def op(ex, rng):
    img = ex['image']
    if pad:
      img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    h, w = img.shape[:2]
    if h < th or w < tw:
      raise ValueError(f'random_crop({size}) on a {h}x{w} image; resize first')
    y, x = rng.integers(0, h - th + 1), rng.integers(0, w - tw + 1)
    return {**ex, 'image': img[y:y + th, x:x + tw]}
  return op


@register
def inception_crop(size, area_min=0.08, area_max=1.0, ratio_min=3 / 4, ratio_max=4 / 3):
  """Random-resized crop: random area and aspect ratio, resized to `size` (Inception / SimCLR)."""
  hw = _hw(size)
  def op(ex, rng):
    img = ex['image']
    h, w = img.shape[:2]
    for _ in range(10):
      area = h * w * rng.uniform(area_min, area_max)
      ratio = math.exp(rng.uniform(math.log(ratio_min), math.log(ratio_max)))
      ch, cw = int(round(math.sqrt(area / ratio))), int(round(math.sqrt(area * ratio)))
      if 0 < ch <= h and 0 < cw <= w:
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        break
    else:  # fall back to the central square
      ch = cw = min(h, w)
      y, x = (h - ch) // 2, (w - cw) // 2
    return {**ex, 'image': _resize_array(img[y:y + ch, x:x + cw], hw)}
  return op


@register
def flip_lr(p=0.5):
  def op(ex, rng):
    return {**ex, 'image': ex['image'][:, ::-1]} if rng.random() < p else ex
  return op


@register
def normalize(mean=0.5, std=0.5):
  """uint8 [0, 255] -> float32 (x/255 - mean) / std, per channel when mean/std are tuples."""
  m = np.asarray(mean, np.float32)
  s = np.asarray(std, np.float32)
  return lambda ex, rng: {**ex, 'image': ((ex['image'].astype(np.float32) / 255.0) - m) / s}
