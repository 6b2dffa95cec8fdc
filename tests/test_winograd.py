"""Winograd F(2x2, 3x3) (ftjax/models/winograd.py) against lax.conv: forward and both gradients on odd and
even sizes, and a ResNet with model.conv_impl='winograd' computes the logits and gradients 'xla' does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import fast_model
from ftjax import models
from ftjax.errors import UserError
from ftjax.models import winograd
from ftjax.models.resnet import ResNet


def _ref(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _close(a, b, rtol=1e-4):
  """Relative to the reference's scale: an entry near 0 is a cancellation, not a relative error."""
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol * float(jnp.abs(b).max()))


@pytest.mark.parametrize('n,h,w,cin,cout', [(2, 7, 7, 3, 8), (1, 8, 8, 16, 16), (2, 13, 13, 8, 4), (1, 5, 10, 32, 24),
                                            (1, 1, 1, 4, 4)])
def test_forward_and_gradients_match_lax_conv(n, h, w, cin, cout):
  kx, kw, kc = jax.random.split(jax.random.key(h * 100 + cin), 3)
  x, k = jax.random.normal(kx, (n, h, w, cin)), jax.random.normal(kw, (3, 3, cin, cout))
  ct = jax.random.normal(kc, (n, h, w, cout))

  @jax.jit
  def both(x, k):
    out = {}
    for name, f in (('wino', winograd.conv3x3), ('ref', _ref)):
      y, vjp = jax.vjp(f, x, k)
      out[name] = (y, *vjp(ct))
    return out

  out = both(x, k)
  for got, want in zip(out['wino'], out['ref']):
    assert got.shape == want.shape
    _close(got, want)


def _tiny(version, conv_impl):
  return lambda: ResNet(18 if version == 'v1.5' else 50, stages=(1, 1, 1, 1), width=0.125, stem='small', version=version,
                        in_channels=3, num_classes=5, zero_init_residual=False, conv_impl=conv_impl, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('version', ['v1.5', 'v2'])
def test_resnet_winograd_matches_xla_on_the_same_weights(version):
  model = fast_model(_tiny(version, 'xla'))
  graph, params, rest = nnx.split(model, nnx.Param, ...)
  wgraph, _, _ = nnx.split(nnx.eval_shape(_tiny(version, 'winograd')), nnx.Param, ...)
  convs = [m for _, m in nnx.graph.iter_graph(nnx.merge(wgraph, params, rest)) if hasattr(m, 'use_winograd')]
  # Stem (3x3/1) and every stride-1 3x3; the stride-2 3x3s and the 1x1s stay on lax.conv / einsum.
  assert any(c.use_winograd for c in convs) and not any(c.use_winograd for c in convs if c.k != 3 or c.stride != 1)
  x = jax.random.normal(jax.random.key(1), (4, 16, 15, 3))

  @jax.jit
  def run(params, rest, x):       # train mode: BatchNorm on batch statistics
    out = []
    for g in (graph, wgraph):
      def loss(params, rest, g=g):
        logits = nnx.merge(g, params, rest)(x).logits
        return (logits ** 2).mean(), logits
      (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params, rest)
      out.append((logits, grads))
    return out

  (lx, gx), (lw, gw) = run(nnx.to_pure_dict(params), nnx.to_pure_dict(rest), x)   # as train.py: plain arrays
  _close(lw, lx)
  jax.tree.map(lambda a, b: _close(a, b, rtol=1e-3), gw, gx)


def test_conv_impl_is_a_model_key_and_a_bad_value_is_a_user_error():
  assert 'conv_impl' in models.defaults('resnet')
  with pytest.raises(UserError, match="conv_impl='fft'.*choose xla .* or winograd"):
    nnx.eval_shape(lambda: models.build(dict(name='resnet', depth=18, conv_impl='fft'), nnx.Rngs(0)))
