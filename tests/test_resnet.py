"""ResNet family: sizes match the published architectures, BatchNorm statistics behave, heads swap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import digits_batch, fast_model, tiny_setup
from ftjax import parallel
from ftjax import state as states
from ftjax.errors import UserError
from ftjax.models.resnet import ResNet

# torchvision's parameter counts for the ImageNet models (1000 classes): an independent reference.
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


def n_params(model):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize('depth', sorted(TORCHVISION_PARAMS))
def test_parameter_counts_match_torchvision(depth):
  model = nnx.eval_shape(lambda: ResNet(depth, rngs=nnx.Rngs(0)))
  assert n_params(model) == TORCHVISION_PARAMS[depth]


def test_imagenet_shapes_and_width_multiplier():
  model = nnx.eval_shape(lambda: ResNet(50, rngs=nnx.Rngs(0)))
  g, st = nnx.split(model)
  out = jax.eval_shape(lambda s, x: nnx.merge(g, s).embed(x), st, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert out.shape == (2, 2048)
  wide = nnx.eval_shape(lambda: ResNet(50, width=2.0, rngs=nnx.Rngs(0)))
  assert wide.num_features == 4096 and n_params(wide) > 3 * TORCHVISION_PARAMS[50]


def _small(**kw):
  return fast_model(lambda: ResNet(18, stages=(1, 1, 1, 1), width=0.125, stem='small', in_channels=1,
                                   num_classes=10, rngs=nnx.Rngs(0), **kw))


def test_batchnorm_train_and_eval_statistics():
  model = _small()
  x = jnp.asarray(digits_batch(16)['image'])
  # Eval mode: running statistics, so an example's output does not depend on its batch-mates.
  model.eval()
  np.testing.assert_allclose(model(x).logits[:4], model(x[:4]).logits, atol=1e-5)
  # Train mode: batch statistics, so it does; and running averages move by momentum 0.9.
  model.train()
  conv_out = np.asarray(model.stem_conv(x))
  y16 = model(x).logits
  y4 = model(x[:4]).logits
  assert np.abs(np.asarray(y16[:4]) - np.asarray(y4)).max() > 1e-3
  # Running stats after two updates from (0, 1): batch A = x, then batch B = x[:4].
  conv_b = np.asarray(model.stem_conv(x[:4]))
  mean_a, var_a = conv_out.mean((0, 1, 2)), conv_out.var((0, 1, 2))
  mean_b, var_b = conv_b.mean((0, 1, 2)), conv_b.var((0, 1, 2))
  np.testing.assert_allclose(model.stem_norm.mean[...], 0.9 * (0.1 * mean_a) + 0.1 * mean_b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(model.stem_norm.var[...], 0.9 * (0.9 + 0.1 * var_a) + 0.1 * var_b, rtol=1e-4)


def test_head_is_a_named_swappable_submodule():
  model = _small()
  model.eval()
  x = jnp.asarray(digits_batch(4)['image'])
  feats = model.embed(x)
  model.head = nnx.Linear(model.num_features, 3, rngs=nnx.Rngs(1))
  out = model(x).logits
  assert out.shape == (4, 3)
  np.testing.assert_allclose(out, model.head(feats), atol=1e-5)
  headless = nnx.eval_shape(lambda: ResNet(18, stages=(1, 1, 1, 1), width=0.125, stem='small', in_channels=1,
                                           num_classes=0, rngs=nnx.Rngs(0)))
  assert headless.head is None


def test_resnet_v2_has_no_batch_statistics():
  model = nnx.eval_shape(lambda: ResNet(50, stages=(1, 1, 1, 1), width=0.25, version='v2', stem='small',
                                        in_channels=1, num_classes=10, rngs=nnx.Rngs(0)))
  assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  assert any(isinstance(m, nnx.GroupNorm) for _, m in nnx.iter_graph(model))
  g, st = nnx.split(model)
  out = jax.eval_shape(lambda s, x: nnx.merge(g, s)(x), st, jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
  assert out.logits.shape == (2, 10)


def test_bf16_compute_with_fp32_master_weights():
  setup = tiny_setup(model_overrides=dict(dtype='bfloat16'))
  mesh = parallel.make_mesh((1,), ('data',), jax.devices()[:1])
  state = states.initialize(setup['init'], parallel.replicated(mesh))
  model = nnx.merge(states.graphdefs(setup['cfg'].model)[1], state.params, state.model_state)
  x = jnp.asarray(digits_batch(4)['image'])
  assert model.stem_conv(x).dtype == jnp.bfloat16
  state, m = jax.jit(setup['step'])(state, digits_batch(16))
  assert np.isfinite(m['train/loss'])
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype('float32')}


def test_bad_model_config():
  with pytest.raises(UserError, match='depth=42'):
    ResNet(42, rngs=nnx.Rngs(0))
  with pytest.raises(UserError, match='stem'):
    ResNet(18, stem='tiny', rngs=nnx.Rngs(0))
