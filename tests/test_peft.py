"""LoRA adapters in peft's format: ftjax's export loads in peft.PeftModel on transformers' BERT and GPT-2 with
the same outputs, and adapter directories (ftjax's and peft's own) load back onto an ftjax base model."""
import json
import os

import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from ftjax import hf
from ftjax.errors import UserError
from ftjax.models import lora

# Non-default, small: odd sizes, gelu_new, 3 token types; GPT-2 with its per-layer attention scaling.
BERT = dict(vocab_size=97, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37,
            hidden_act='gelu_new', max_position_embeddings=24, type_vocab_size=3, layer_norm_eps=1e-7, num_labels=3)
GPT2 = dict(vocab_size=101, n_positions=24, n_embd=24, n_layer=2, n_head=3, n_inner=40, layer_norm_epsilon=1e-6,
            scale_attn_by_inverse_layer_idx=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
FILES = {'adapter_config.json', 'adapter_model.safetensors'}


def _perturbed(model):
  """Non-trivial biases and LayerNorms (a fresh model has zeros and ones)."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _batch(vocab, seed=0, b=3, t=9):
  rng = np.random.default_rng(seed)
  mask = np.ones((b, t), np.int64)
  mask[1, 6:] = 0
  mask[2, 3:] = 0
  return np.where(mask == 1, rng.integers(3, vocab, (b, t)), 0), mask


def _randomise(model, seed):
  """Non-zero lora_b (a fresh adapter is the identity): the adapters change the outputs."""
  for i, (_, m) in enumerate(nnx.iter_modules(model)):
    if isinstance(m, lora.LoRALinear):
      m.lora_b[...] = 0.3 * jax.random.normal(jax.random.key(seed + i), m.lora_b.shape)
  return model


def _lora_tensors(model):
  return {'.'.join(map(str, p)) + '.' + ab: np.asarray(getattr(m, ab)[...]) for p, m in nnx.iter_modules(model)
          if isinstance(m, lora.LoRALinear) for ab in ('lora_a', 'lora_b')}


def _torch(model, **inputs):
  with torch.no_grad():
    return model(**{k: torch.tensor(v) for k, v in inputs.items()}, output_hidden_states=True)


@pytest.fixture(scope='module')
def bert(tmp_path_factory):
  """A transformers classifier as the base; ftjax's copy with LoRA on query / value and a retrained head."""
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp('bert')
  _perturbed(transformers.BertForSequenceClassification(transformers.BertConfig(**BERT))).save_pretrained(root / 'base')
  base, _ = hf.from_pretrained(str(root / 'base'), head='classification', num_labels=3, verbose=False)
  adapted = _randomise(lora.apply(nnx.clone(base), rank=2, alpha=5.0, targets=r'attention\.self\.(query|value)$',
                                  rngs=nnx.Rngs(1)), 0)
  adapted.classifier.kernel[...] += 0.5
  hf.save_adapters(adapted, str(root / 'adapter'), modules_to_save=['classifier'])
  ids, mask = _batch(BERT['vocab_size'])
  inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=np.random.default_rng(1).integers(0, 3, ids.shape))
  return dict(root=root, adapted=adapted, inputs=inputs, head=dict(head='classification', num_labels=3))


@pytest.fixture(scope='module')
def gpt2(tmp_path_factory):
  torch.manual_seed(1)
  root = tmp_path_factory.mktemp('gpt2')
  _perturbed(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2))).save_pretrained(root / 'base')
  base, _ = hf.from_pretrained(str(root / 'base'), head='lm', verbose=False)
  adapted = _randomise(lora.apply(nnx.clone(base), rank=3, alpha=4.0, targets=r'c_attn$', rngs=nnx.Rngs(2)), 10)
  hf.save_adapters(adapted, str(root / 'adapter'), base_model_name_or_path='tiny-gpt2')
  ids, mask = _batch(GPT2['vocab_size'], seed=2)
  return dict(root=root, adapted=adapted, inputs=dict(input_ids=ids, attention_mask=mask), head=dict(head='lm'))


@jax.jit
def bert_forward(model, x):
  return model(x['input_ids'], x['attention_mask'], x['token_type_ids']).logits, model.bert(
      x['input_ids'], x['attention_mask'], x['token_type_ids']).last_hidden_state


@jax.jit
def gpt2_forward(model, x):
  return model(x['input_ids'], x['attention_mask']).logits


def test_bert_adapters_load_in_peft_with_the_same_outputs(bert):
  root, x = bert['root'], bert['inputs']
  assert set(os.listdir(root / 'adapter')) == FILES
  keys = set(load_file(root / 'adapter' / 'adapter_model.safetensors'))
  assert keys == {f'base_model.model.bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.weight'
                  for i in range(2) for m in ('query', 'value') for ab in 'AB'} | {
                      'base_model.model.classifier.weight', 'base_model.model.classifier.bias'}   # no base weights
  config = json.loads((root / 'adapter' / 'adapter_config.json').read_text())
  assert (config['peft_type'], config['r'], config['lora_alpha'], config['target_modules'], config['fan_in_fan_out'],
          config['modules_to_save']) == ('LORA', 2, 5, ['query', 'value'], False, ['classifier'])
  base = transformers.BertForSequenceClassification.from_pretrained(root / 'base').eval()
  plain = _torch(base, **x).logits.numpy()
  model = peft.PeftModel.from_pretrained(base, root / 'adapter').eval()
  ref = _torch(model, **x)
  logits, hidden = bert_forward(bert['adapted'], x)
  assert np.abs(np.asarray(logits) - plain).max() > 1e-2          # the adapters and the head matter
  np.testing.assert_allclose(logits, ref.logits.numpy(), atol=1e-4, rtol=0)
  valid = x['attention_mask'].astype(bool)
  np.testing.assert_allclose(np.asarray(hidden)[valid], ref.hidden_states[-1].numpy()[valid], atol=1e-4, rtol=0)


def test_gpt2_conv1d_adapters_load_in_peft_with_the_same_outputs(gpt2):
  root, x = gpt2['root'], gpt2['inputs']
  assert set(os.listdir(root / 'adapter')) == FILES
  tensors = load_file(root / 'adapter' / 'adapter_model.safetensors')
  assert {k: v.shape for k, v in tensors.items()} == {
      **{f'base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight': (3, 24) for i in range(2)},
      **{f'base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight': (72, 3) for i in range(2)}}
  config = json.loads((root / 'adapter' / 'adapter_config.json').read_text())
  assert (config['target_modules'], config['fan_in_fan_out'], config['lora_alpha'], config['use_rslora'],
          config['base_model_name_or_path']) == (['c_attn'], True, 4, False, 'tiny-gpt2')
  base = transformers.GPT2LMHeadModel.from_pretrained(root / 'base').eval()
  plain = _torch(base, **x).logits.numpy()
  ref = _torch(peft.PeftModel.from_pretrained(base, root / 'adapter').eval(), **x).logits.numpy()
  ours = np.asarray(gpt2_forward(gpt2['adapted'], x))
  valid = x['attention_mask'].astype(bool)
  assert np.abs(ours - plain)[valid].max() > 1e-2
  np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=0)


@pytest.mark.parametrize('family', ['bert', 'gpt2'])
def test_adapters_load_back_onto_the_base_model(family, request):
  fx = request.getfixturevalue(family)
  model, _ = hf.from_pretrained(str(fx['root'] / 'base'), verbose=False, **fx['head'])
  assert hf.load_adapters(model, str(fx['root'] / 'adapter')) is model
  want = _lora_tensors(fx['adapted'])
  got = _lora_tensors(model)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  forward = bert_forward if family == 'bert' else gpt2_forward
  for a, b in zip(jax.tree.leaves(forward(model, fx['inputs'])), jax.tree.leaves(forward(fx['adapted'], fx['inputs']))):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)    # the same scale, and the retrained head (BERT)


def test_a_peft_made_adapter_loads_into_ftjax(gpt2, tmp_path):
  """peft's own layout, not only ftjax's: c_attn and both c_proj (Conv1D), rsLoRA's alpha / sqrt(r)."""
  base = transformers.GPT2LMHeadModel.from_pretrained(gpt2['root'] / 'base').eval()
  model = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=3, target_modules=['c_attn', 'c_proj'],
                                                    fan_in_fan_out=True, use_rslora=True, lora_dropout=0.0))
  torch.manual_seed(3)
  with torch.no_grad():
    for n, p in model.named_parameters():
      if 'lora_B' in n:
        p.normal_(0, 0.3)
  model.save_pretrained(tmp_path)
  ours, _ = hf.from_pretrained(str(gpt2['root'] / 'base'), head='lm', verbose=False)
  hf.load_adapters(ours, str(tmp_path))
  assert len(_lora_tensors(ours)) == 2 * 3 * GPT2['n_layer']
  x = gpt2['inputs']
  valid = x['attention_mask'].astype(bool)
  ref = _torch(model.eval(), **x).logits.numpy()
  np.testing.assert_allclose(np.asarray(gpt2_forward(ours, x))[valid], ref[valid], atol=1e-4, rtol=0)


def test_a_bad_adapter_directory_is_one_user_error(bert, gpt2, tmp_path):
  bert_base = hf.from_pretrained(str(bert['root'] / 'base'), verbose=False, **bert['head'])[0]
  cases = {'gpt2_on_bert': (gpt2['root'] / 'adapter', bert_base, r'transformer\.h\.0\.attn\.c_attn.* lacks')}
  # The same BERT adapter on a BERT of another width: the base shapes differ.
  wide = transformers.BertForSequenceClassification(transformers.BertConfig(**{**BERT, 'hidden_size': 30}))
  wide.save_pretrained(tmp_path / 'wide')
  cases['wrong_shapes'] = (bert['root'] / 'adapter', hf.from_pretrained(str(tmp_path / 'wide'), verbose=False,
                                                                       **bert['head'])[0],
                           r'attention\.self\.query\.lora_A / lora_B have shapes \(2, 24\) / \(24, 2\).*\(2, 30\)')
  for name, edit, msg in (('dora', dict(use_dora=True), 'use_dora=True is not supported'),
                          ('prompt', dict(peft_type='PROMPT_TUNING'), "peft_type='PROMPT_TUNING'")):
    d = tmp_path / name
    d.mkdir()
    config = json.loads((bert['root'] / 'adapter' / 'adapter_config.json').read_text())
    (d / 'adapter_config.json').write_text(json.dumps({**config, **edit}))
    save_file(load_file(bert['root'] / 'adapter' / 'adapter_model.safetensors'), str(d / 'adapter_model.safetensors'))
    cases[name] = (d, bert_base, msg)
  pickled = tmp_path / 'pickled'
  pickled.mkdir()
  (pickled / 'adapter_config.json').write_text((bert['root'] / 'adapter' / 'adapter_config.json').read_text())
  (pickled / 'adapter_model.bin').write_bytes(b'not read')
  cases['pickle'] = (pickled, bert_base, 'adapter_model.bin is a pickle, which ftjax does not load')
  for name, content, msg in (('damaged', b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": 1', 'not a readable safetensors file'),
                             ('empty', b'', r'the file is empty \(0 bytes\); expected the adapter_model.safetensors')):
    d = tmp_path / name
    d.mkdir()
    (d / 'adapter_config.json').write_text((bert['root'] / 'adapter' / 'adapter_config.json').read_text())
    (d / 'adapter_model.safetensors').write_bytes(content)
    cases[name] = (d, bert_base, msg)
  for name, (d, model, msg) in cases.items():
    before = nnx.to_pure_dict(nnx.state(model))
    with pytest.raises(UserError, match=msg):
      hf.load_adapters(model, str(d))
    assert not lora.has_adapters(model), name                                  # nothing changed
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(model)), before)
