"""Transfer: transformers ResNet round trip and parity, head surgery, freezing, LLRD, LoRA."""
import numpy as np
import pytest
import torch
import transformers

from ftjax import hf
from ftjax.errors import UserError

RESNETS = {   # non-default, small: 3 and 2 input channels, uneven depths, both block types
    'bottleneck': dict(num_channels=3, embedding_size=16, hidden_sizes=[64, 128, 256, 512], depths=[1, 2, 1, 1],
                       layer_type='bottleneck'),
    'basic': dict(num_channels=2, embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 1, 1, 1],
                  layer_type='basic'),
}


def _randomise(ref):
  """Non-trivial BatchNorm statistics and affine parameters, so eval mode exercises all of them."""
  with torch.no_grad():
    for name, buf in ref.named_buffers():
      if name.endswith('running_mean'):
        buf.copy_(0.1 * torch.randn_like(buf))
      elif name.endswith('running_var'):
        buf.copy_(torch.rand_like(buf) + 0.5)
    for name, p in ref.named_parameters():
      if 'normalization' in name or 'classifier' in name:
        p.add_(0.2 * torch.randn_like(p))


@pytest.mark.parametrize('kind', sorted(RESNETS))
def test_resnet_parity_and_round_trip_with_transformers(kind, tmp_path):
  torch.manual_seed(0)
  cfg = transformers.ResNetConfig(**RESNETS[kind], num_labels=5)
  cls = transformers.ResNetForImageClassification if kind == 'bottleneck' else transformers.ResNetModel
  ref = cls(cfg).eval()
  _randomise(ref)
  ref.save_pretrained(str(tmp_path / 'hf'))
  model, report = hf.from_pretrained(str(tmp_path / 'hf'), verbose=False)
  assert not report['initialised'] and not report['ignored'], report
  model.eval()
  x = np.random.default_rng(0).normal(size=(2, cfg.num_channels, 40, 40)).astype(np.float32)
  with torch.no_grad():
    r = ref(torch.from_numpy(x))
  out = model(x.transpose(0, 2, 3, 1))       # NHWC
  out = np.asarray(out.logits if kind == 'bottleneck' else out.pooler_output)
  want = r.logits.numpy() if kind == 'bottleneck' else r.pooler_output.numpy()[:, :, 0, 0]
  assert out.shape == want.shape
  np.testing.assert_allclose(out, want, atol=1e-4)
  # Back: ftjax -> directory -> transformers, nothing missing or unexpected, same outputs.
  hf.save_pretrained(model, str(tmp_path / 'back'))
  again, info = cls.from_pretrained(str(tmp_path / 'back'), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  with torch.no_grad():
    r2 = again.eval()(torch.from_numpy(x))
  np.testing.assert_allclose(r2.logits.numpy() if kind == 'bottleneck' else r2.pooler_output.numpy(),
                             r.logits.numpy() if kind == 'bottleneck' else r.pooler_output.numpy(), atol=1e-5)


def test_resnet_head_surgery(tmp_path):
  """A 5-class checkpoint fine-tuned on 3 classes: the body loads, the head is fresh only when asked."""
  torch.manual_seed(1)
  ref = transformers.ResNetForImageClassification(
      transformers.ResNetConfig(**RESNETS['bottleneck'], num_labels=5)).eval()
  ref.save_pretrained(str(tmp_path / 'hf'))
  with pytest.raises(UserError, match=r'classifier\.1\.(weight|bias) has shape.*init\.reinit'):
    hf.from_pretrained(str(tmp_path / 'hf'), num_classes=3, verbose=False)
  model, report = hf.from_pretrained(str(tmp_path / 'hf'), num_classes=3, reinit='head', verbose=False)
  assert sorted(report['initialised']) == ['classifier.1.bias', 'classifier.1.weight']
  assert report['ignored'] == ['classifier.1.bias', 'classifier.1.weight']
  np.testing.assert_array_equal(model.stem_conv.kernel[...],
                                ref.resnet.embedder.embedder.convolution.weight.detach().numpy().transpose(2, 3, 1, 0))
  # Dropped head: a feature extractor (num_classes=0) ignores the classifier.
  feats, report = hf.from_pretrained(str(tmp_path / 'hf'), num_classes=0, verbose=False)
  assert not report['initialised'] and report['ignored'] == ['classifier.1.bias', 'classifier.1.weight']
  feats.eval()
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = ref.resnet(torch.from_numpy(x.transpose(0, 3, 1, 2))).pooler_output.numpy()[:, :, 0, 0]
  np.testing.assert_allclose(feats(x).pooler_output, want, atol=1e-4)


# ---- Freezing, layer-wise lr decay, LoRA ------------------------------------------------------------
TINY_BERT = dict(name='bert', vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=40, max_position_embeddings=24, hidden_act='gelu_new', initializer_range=0.2,
                 head='classification', num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TEXT_INPUTS = ('input_ids', 'attention_mask', 'token_type_ids')


def _text_batch(seed=0, b=8, t=12):
  rng = np.random.default_rng(seed)
  mask = (np.arange(t)[None] < rng.integers(4, t + 1, (b, 1))).astype(np.int32)
  return {'input_ids': rng.integers(1, 97, (b, t)).astype(np.int32) * mask, 'attention_mask': mask,
          'token_type_ids': np.zeros((b, t), np.int32), 'label': rng.integers(0, 3, b).astype(np.int32)}


def _run(model_cfg, optim_cfg, batch, steps=3, inputs=TEXT_INPUTS, train_mode=True):
  """A few real train steps through the trainer's own functions: (initial state, final state)."""
  import jax
  from ftjax import defaults, optim, tasks, train
  from ftjax import state as states
  cfg = defaults.base_config()
  cfg.model.update(model_cfg)
  cfg.optim.update(optim_cfg)
  cfg.task.inputs = inputs
  cfg.schedule.name = 'constant'
  from ftjax import models
  tx, sched = optim.build(cfg.optim, cfg.schedule, 10, layer_of=models.get_module(cfg.model.name).lr_layer)
  g_train, g_eval = states.graphdefs(cfg.model)
  step = jax.jit(train.make_train_step(g_train if train_mode else g_eval, tasks.build(cfg.task), tx, sched,
                                       trainable=optim.trainable_fn(cfg.optim)))
  s0 = states.initialize(states.make_init(cfg.model, tx, 0), None)
  s = s0
  for _ in range(steps):
    s, mets = step(s, batch)
  return jax.device_get(s0), jax.device_get(s), (g_eval, cfg)


def _changed(a, b):
  from ftjax.optim import names
  import jax
  return {n for n, x, y in zip(jax.tree.leaves(names(a)), jax.tree.leaves(a), jax.tree.leaves(b))
          if not np.array_equal(x, y)}


def test_lora_trains_only_adapters_and_merges_back(tmp_path):
  from flax import nnx
  from ftjax.models import lora
  cfg = {**TINY_BERT, 'lora': dict(rank=4, alpha=8.0, targets=r'attention\.self\.(query|value)$')}
  batch = _text_batch()
  s0, s1, (g_eval, _) = _run(cfg, dict(name='adamw', lr=1e-2, weight_decay=0.1, trainable='lora_'), batch)
  changed = _changed(s0.params, s1.params)
  expected = {f'bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}' for i in range(2) for m in ('query', 'value')
              for ab in 'ab'}
  assert changed == expected            # weight decay and all: nothing else moved
  model = nnx.merge(g_eval, s1.params, s1.model_state)
  want = np.asarray(model(*(batch[k] for k in TEXT_INPUTS)).logits)
  merged = lora.merge(nnx.clone(model))
  assert not lora.has_adapters(merged)
  np.testing.assert_allclose(merged(*(batch[k] for k in TEXT_INPUTS)).logits, want, atol=1e-5)
  # Export merges on the way out; transformers gives the adapted model's outputs.
  hf.save_pretrained(model, str(tmp_path / 'hf'))
  ref, info = transformers.BertForSequenceClassification.from_pretrained(str(tmp_path / 'hf'),
                                                                           output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  with torch.no_grad():
    got = ref.eval()(**{k: torch.from_numpy(batch[k].astype(np.int64)) for k in TEXT_INPUTS}).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-4)
  with pytest.raises(UserError, match='matches no dense layer'):
    _run({**TINY_BERT, 'lora': dict(rank=2, targets='nothing_here')}, {}, batch, steps=0)


def test_linear_probe_freezing_keeps_backbone_and_batchnorm_statistics():
  import sys
  import os
  sys.path.insert(0, os.path.dirname(__file__))
  from conftest import digits_batch
  cfg = dict(name='resnet', depth=18, stages=(1, 1, 1, 1), width=0.125, stem='small', in_channels=1, num_classes=10)
  batch = digits_batch()
  s0, s1, _ = _run(cfg, dict(name='adamw', lr=1e-2, weight_decay=0.1, trainable='^head'), batch, inputs=('image',),
                   train_mode=False)
  assert _changed(s0.params, s1.params) == {'head.kernel', 'head.bias'}
  assert not _changed(s0.model_state, s1.model_state)
  # freeze= takes parameters out of training; in train mode BatchNorm statistics still move.
  s0, s1, _ = _run(cfg, dict(name='sgd', lr=0.1, freeze=r'^stages\.0\.|^stem_'), batch, inputs=('image',))
  changed = _changed(s0.params, s1.params)
  assert changed and not any(n.startswith(('stages.0.', 'stem_')) for n in changed)
  assert any(n.startswith('stages.1.') for n in changed)
  assert _changed(s0.model_state, s1.model_state)


def test_layerwise_lr_decay_scales_updates_by_depth():
  """One plain-SGD step with layer_decay=0.5 moves each parameter by 0.5 ** (L - depth) times the
  undecayed step: embeddings 1/8, layer 0 1/4, layer 1 1/2, pooler and classifier 1."""
  import jax
  from ftjax.optim import names
  batch = _text_batch()
  base, plain, _ = _run(TINY_BERT, dict(name='sgd', lr=0.5, momentum=0.0), batch, steps=1)
  _, decayed, _ = _run(TINY_BERT, dict(name='sgd', lr=0.5, momentum=0.0, layer_decay=0.5), batch, steps=1)

  def expected(n):
    if n.startswith('bert.embeddings.'):
      return 0.125
    if n.startswith('bert.encoder.layer.'):
      return {'0': 0.25, '1': 0.5}[n.split('.')[3]]
    return 1.0
  seen = set()
  for n, p0, p1, p2 in zip(jax.tree.leaves(names(base.params)), jax.tree.leaves(base.params),
                           jax.tree.leaves(plain.params), jax.tree.leaves(decayed.params)):
    np.testing.assert_allclose(p2 - p0, expected(n) * (p1 - p0), rtol=1e-4, atol=1e-7, err_msg=n)
    seen.add(expected(n))
  assert seen == {0.125, 0.25, 0.5, 1.0}
