"""SimCLR (Chen et al. 2020): two augmented views of every image, encoder + projection MLP, NT-Xent.

Augmentation runs on the accelerator, batched, from the step's RNG: random resized crop, horizontal
flip, colour jitter (brightness, contrast, saturation, hue; p=0.8), grayscale (p=0.2), Gaussian
blur (p=0.5, images >= 32 px only). Input images are floats in [0, 1] (pp 'normalize(0, 1)');
`task.augment.normalize` = (mean, std) is applied after augmenting, `task.augment.size` (if set) is
the crops' output size, so the host can ship e.g. 256 px centre crops and the views be 224 px.

The loss is computed on the global batch as one array: under jit with a batch sharded over devices
and processes, XLA gathers the projections, so every example's negatives are all 2N - 2 other views
of the global batch, as in SimCLR's cross-replica loss. BatchNorm statistics are global likewise.
"""
import jax
import jax.numpy as jnp

from ftjax.errors import UserError
from ftjax.tasks import embed


def nt_xent(z1, z2, temperature):
  """Normalised-temperature cross-entropy over 2N views; returns (loss, top-1 accuracy of finding
  each view's partner among the other 2N - 1)."""
  z = jnp.concatenate([z1, z2]).astype(jnp.float32)
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
  n2 = z.shape[0]
  sim = (z @ z.T) / temperature
  sim = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, sim)
  partner = (jnp.arange(n2) + n2 // 2) % n2
  logp = jax.nn.log_softmax(sim, axis=-1)
  loss = -jnp.take_along_axis(logp, partner[:, None], axis=-1).mean()
  return loss, jnp.mean(jnp.argmax(sim, -1) == partner)


# ---- Augmentations: one image [H, W, C] in [0, 1] and a key each; vmapped over the batch. ----------
def random_resized_crop(key, img, crop_min, ratio=(3 / 4, 4 / 3), size=0):
  """A crop of crop_min..1 of the area, aspect ratio in `ratio`, resized to size x size (0: input size)."""
  h, w, c = img.shape
  k1, k2, k3, k4 = jax.random.split(key, 4)
  area = jax.random.uniform(k1, (), minval=crop_min, maxval=1.0) * h * w
  logr = jax.random.uniform(k2, (), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
  cw = jnp.clip(jnp.sqrt(area * jnp.exp(logr)), 1.0, w)
  ch = jnp.clip(jnp.sqrt(area / jnp.exp(logr)), 1.0, h)
  y0 = jax.random.uniform(k3, ()) * (h - ch)
  x0 = jax.random.uniform(k4, ()) * (w - cw)
  oh, ow = (size, size) if size else (h, w)
  scale = jnp.stack([oh / ch, ow / cw])
  return jax.image.scale_and_translate(img, (oh, ow, c), (0, 1), scale, -jnp.stack([y0, x0]) * scale, 'linear',
                                       antialias=False)


def _gray(img):
  return (img @ jnp.array([0.299, 0.587, 0.114], img.dtype))[..., None] if img.shape[-1] == 3 else img


def color_jitter(key, img, s):
  """SimCLR's jitter at strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s (a rotation of
  the YIQ chroma plane)."""
  kb, kc, ks, kh = jax.random.split(key, 4)
  u = lambda k, a: jax.random.uniform(k, (), minval=1 - a, maxval=1 + a)
  img = jnp.clip(img * u(kb, 0.8 * s), 0, 1)
  img = jnp.clip((img - _gray(img).mean()) * u(kc, 0.8 * s) + _gray(img).mean(), 0, 1)
  if img.shape[-1] == 3:
    img = jnp.clip((img - _gray(img)) * u(ks, 0.8 * s) + _gray(img), 0, 1)
    theta = jax.random.uniform(kh, (), minval=-0.2 * s, maxval=0.2 * s) * 2 * jnp.pi
    to_yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = jnp.array([[1, 0, 0], [0, jnp.cos(theta), -jnp.sin(theta)], [0, jnp.sin(theta), jnp.cos(theta)]])
    img = jnp.clip(img @ (jnp.linalg.inv(to_yiq) @ rot @ to_yiq).T, 0, 1)
  return img


def gaussian_blur(key, img, sigma_range=(0.1, 2.0)):
  """Separable blur with a kernel ~10% of the image side, sigma uniform in sigma_range."""
  h, w, c = img.shape
  radius = max(1, h // 20)
  sigma = jax.random.uniform(key, (), minval=sigma_range[0], maxval=sigma_range[1])
  k = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1) / sigma) ** 2)
  k = k / k.sum()
  pad = jnp.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode='reflect')
  rows = sum(k[i] * pad[i:i + h] for i in range(2 * radius + 1))
  return sum(k[i] * rows[:, i:i + w] for i in range(2 * radius + 1))


def augment(key, img, cfg):
  ks = jax.random.split(key, 8)
  img = random_resized_crop(ks[0], img, cfg.crop_min, size=cfg.get('size', 0))
  img = jnp.where(jax.random.uniform(ks[1]) < cfg.flip, img[:, ::-1], img)
  if cfg.jitter:
    img = jnp.where(jax.random.uniform(ks[2]) < 0.8, color_jitter(ks[3], img, cfg.jitter), img)
  if cfg.gray and img.shape[-1] == 3:
    img = jnp.where(jax.random.uniform(ks[4]) < cfg.gray, jnp.broadcast_to(_gray(img), img.shape), img)
  if cfg.blur and min(img.shape[:2]) >= 32:
    img = jnp.where(jax.random.uniform(ks[5]) < cfg.blur, gaussian_blur(ks[6], img), img)
  return _normalize(img, cfg.normalize)


def _normalize(img, mean_std):
  mean, std = (jnp.asarray(v, jnp.float32) for v in mean_std)
  return (img - mean) / std


class Task:

  def __init__(self, cfg):
    self.inputs = tuple(cfg.get('inputs', ('image',)))
    self.temperature = cfg.get('temperature', 0.1)
    self.augment = cfg.augment

  def views(self, images, rng):
    keys = jax.random.split(rng, 2 * images.shape[0]).reshape(2, images.shape[0], -1)
    aug = jax.vmap(lambda k, x: augment(k, x.astype(jnp.float32), self.augment))
    return aug(keys[0], images), aug(keys[1], images)

  def loss(self, model, batch, rng=None):
    if rng is None:
      raise UserError('the contrastive task needs a random key for its views')
    if not hasattr(model, 'project'):
      raise UserError('the contrastive task needs a model with a projection head (resnet: model.projection)')
    v1, v2 = self.views(batch[self.inputs[0]], rng)
    z = model.project(model.embed(jnp.concatenate([v1, v2])))
    loss, acc = nt_xent(*jnp.split(z, 2), self.temperature)
    return loss, {'loss': loss, 'contrastive_accuracy': acc}

  def predict(self, model, batch):
    raise UserError('the contrastive task has no per-example predictions: evaluate it with the '
                    'linear_probe, fewshot or knn evaluators')

  def features(self, model, batch):
    """Features of the un-augmented image (centre crop to augment.size when set), normalised as in training."""
    x = batch[self.inputs[0]]
    size = self.augment.get('size', 0)
    if size and x.shape[1] != size:
      top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
      x = x[:, top:top + size, left:left + size]
    return embed(model, {self.inputs[0]: _normalize(x, self.augment.normalize)}, self.inputs)
