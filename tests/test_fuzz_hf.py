"""Damaged transformers files are one clear UserError line, never a library traceback (property-based).

Valid files are built once per module (a tiny random BERT through hf.save_pretrained, the same state
dict through torch.save, a trained WordPiece tokenizer); each example then damages a copy: cuts it
strictly inside, flips bytes of the safetensors JSON header, drops or mistypes config fields, re-encodes
text files, fills a state dict with non-tensors. Mutations that always make a file invalid assert a
UserError; those that can leave it valid (byte flips) assert "a result or a UserError, nothing else".
"""
import json
import os
import shutil
import struct
import tempfile

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftjax import hf, hub, models
from ftjax.data import tokenizers
from ftjax.errors import UserError
from ftjax.models import bert, resnet

FUZZ = settings(max_examples=5, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=24, initializer_range=0.2, hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1)
SENTENCES = ['the quick brown fox jumps over the lazy dog', 'hello world, hello again', 'a cafe in the town',
             'jax compiles numpy programs', 'the dog and the fox are friends'] * 3


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """{'bert': safetensors dir, 'bin': pytorch_model.bin dir, 'tok': tokenizer.json + vocab.txt dir,
  'resnet': a ResNet config.json dir}: valid, never modified."""
  root = tmp_path_factory.mktemp('valid')
  model = bert.BertModel(bert.BertConfig.from_dict(TINY), rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(0)       # non-trivial biases and LayerNorm parameters too
  nnx.update(model, jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(p.dtype), params))
  hf.save_pretrained(model, str(root / 'bert'))
  (root / 'bin').mkdir()
  shutil.copy(root / 'bert' / 'config.json', root / 'bin' / 'config.json')
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in hub.load_state_dict(str(root / 'bert')).items()},
             str(root / 'bin' / 'pytorch_model.bin'))
  tokenizers.train_wordpiece(SENTENCES, 100, str(root / 'tok'))
  (root / 'resnet').mkdir()
  json.dump(dict(model_type='resnet', num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 32, 64],
                 depths=[1, 1, 1, 1], layer_type='basic', hidden_act='relu', downsample_in_first_stage=False,
                 downsample_in_bottleneck=False, architectures=['ResNetModel']),
            open(root / 'resnet' / 'config.json', 'w'))
  resnet.from_hf_config(hub.read_config(str(root / 'resnet')))        # valid as written
  return {k: str(root / k) for k in ('bert', 'bin', 'tok', 'resnet')}


def _read(path):
  with open(path, 'rb') as f:
    return f.read()


def _copy(tmp_path, src, only=None, **replace):
  """A fresh directory per example (a function-scoped tmp_path is shared by hypothesis' examples):
  src's files (or `only` of them), with `replace` = {file name with '.' as '_': new bytes}."""
  d = tempfile.mkdtemp(dir=tmp_path)
  for name in only or os.listdir(src):
    shutil.copy(os.path.join(src, name), d)
  for key, data in replace.items():
    name = {'model_safetensors': 'model.safetensors', 'pytorch_model_bin': 'pytorch_model.bin',
            'config_json': 'config.json', 'tokenizer_json': 'tokenizer.json', 'vocab_txt': 'vocab.txt'}[key]
    with open(os.path.join(d, name), 'wb') as f:
      f.write(data)
  return d


def _one_line(err: UserError, *names):
  msg = str(err)
  assert msg and '\n' not in msg and '\r' not in msg, repr(msg)
  for n in names:
    assert n in msg, (n, msg)
  return msg


def _user_error(fn, *names):
  with pytest.raises(UserError) as e:
    fn()
  return _one_line(e.value, *names)


def _valid_or_user_error(fn, *names):
  try:
    fn()
  except UserError as e:
    _one_line(e, *names)


def _pretrained(d):
  return hf.from_pretrained(d, verbose=False)


# ---- weights ------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_truncated_safetensors(files, tmp_path, data):
  full = _read(os.path.join(files['bert'], 'model.safetensors'))
  cut = data.draw(st.integers(1, len(full) - 1), label='cut')     # the header's offsets no longer fit
  d = _copy(tmp_path, files['bert'], model_safetensors=full[:cut])
  _user_error(lambda: _pretrained(d), os.path.join(d, 'model.safetensors'))
  _user_error(lambda: hub.load_state_dict(d), os.path.join(d, 'model.safetensors'))


def _flipped(data, raw: bytes, lo: int = 0, hi: int | None = None) -> bytes:
  """`raw` with 1-3 bytes in [lo, hi) XOR-ed by drawn non-zero masks."""
  out = bytearray(raw)
  for pos, x in data.draw(st.lists(st.tuples(st.integers(lo, (len(raw) if hi is None else hi) - 1),
                                             st.integers(1, 255)), min_size=1, max_size=3), label='flips'):
    out[pos] ^= x
  return bytes(out)


@FUZZ
@given(data=st.data())
def test_safetensors_header_byte_flips(files, tmp_path, data):
  full = _read(os.path.join(files['bert'], 'model.safetensors'))
  (n,) = struct.unpack('<Q', full[:8])
  d = _copy(tmp_path, files['bert'], model_safetensors=_flipped(data, full, 8, 8 + n))
  # A flip inside a tensor name or the metadata can leave a valid file (a renamed tensor is then
  # reported as freshly initialised): a result or a UserError, never another exception.
  _valid_or_user_error(lambda: _pretrained(d), d)


@FUZZ
@given(data=st.data())
def test_truncated_pytorch_bin(files, tmp_path, data):
  full = _read(os.path.join(files['bin'], 'pytorch_model.bin'))
  cut = data.draw(st.integers(1, len(full) - 1), label='cut')     # the zip's central directory is at the end
  d = _copy(tmp_path, files['bin'], pytorch_model_bin=full[:cut])
  _user_error(lambda: _pretrained(d), os.path.join(d, 'pytorch_model.bin'))


NON_TENSORS = st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.booleans(), st.none(),
                        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                        st.dictionaries(st.just('weight'), st.just(torch.zeros(2)), min_size=1))


@FUZZ
@given(data=st.data())
def test_pytorch_bin_with_non_tensor_entries(files, tmp_path, data):
  sd = torch.load(os.path.join(files['bin'], 'pytorch_model.bin'), weights_only=True)
  key = data.draw(st.one_of(st.sampled_from(sorted(sd)), st.just('step')), label='key')
  sd[key] = data.draw(NON_TENSORS, label='value')
  d = _copy(tmp_path, files['bin'], only=['config.json'])
  torch.save(sd, os.path.join(d, 'pytorch_model.bin'))
  _user_error(lambda: _pretrained(d), os.path.join(d, 'pytorch_model.bin'), repr(key), 'not a tensor')


@pytest.mark.parametrize('content', [[1, 2], 'weights', (torch.ones(2),), torch.ones(3)],
                         ids=['list', 'str', 'tuple', 'tensor'])
def test_pytorch_bin_that_is_not_a_dict(files, tmp_path, content):
  d = _copy(tmp_path, files['bin'], only=['config.json'])
  torch.save(content, os.path.join(d, 'pytorch_model.bin'))
  _user_error(lambda: hub.load_state_dict(d), os.path.join(d, 'pytorch_model.bin'), 'not a dict')


class _Opaque:
  pass


def test_pytorch_bin_with_pickled_objects_is_refused(files, tmp_path):
  d = _copy(tmp_path, files['bin'], only=['config.json'])
  torch.save({'x': _Opaque()}, os.path.join(d, 'pytorch_model.bin'))
  _user_error(lambda: hub.load_state_dict(d), os.path.join(d, 'pytorch_model.bin'), 'weights_only=True')


@pytest.mark.parametrize('kind,name', [('bert', 'model.safetensors'), ('bin', 'pytorch_model.bin'),
                                       ('bert', 'config.json'), ('tok', 'tokenizer.json'), ('tok', 'vocab.txt')])
def test_empty_files(files, tmp_path, kind, name):
  only = ['vocab.txt'] if name == 'vocab.txt' else None      # tokenizer.json would be read first
  d = _copy(tmp_path, files[kind], only=only, **{name.replace('.', '_'): b''})
  load = tokenizers.load_tokenizer if kind == 'tok' else _pretrained
  assert 'empty' in _user_error(lambda: load(d), os.path.join(d, name))


# ---- config.json --------------------------------------------------------------------------------
def _json_bytes(obj, encoding='utf-8'):
  return json.dumps(obj, indent=2, ensure_ascii=False).encode(encoding)


@FUZZ
@given(data=st.data())
def test_truncated_config_json(files, tmp_path, data):
  full = _read(os.path.join(files['bert'], 'config.json'))
  cut = data.draw(st.integers(1, full.rindex(b'}')), label='cut')    # the closing brace is always lost
  d = _copy(tmp_path, files['bert'], config_json=full[:cut])
  msg = _user_error(lambda: hub.read_config(d), os.path.join(d, 'config.json'))
  assert 'not valid JSON' in msg and 'line ' in msg and 'column ' in msg
  _user_error(lambda: _pretrained(d), os.path.join(d, 'config.json'))


@FUZZ
@given(top=st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.floats(allow_nan=False),
                     st.text(max_size=5), st.booleans(), st.none()))
def test_config_json_whose_top_level_is_not_an_object(files, tmp_path, top):
  d = _copy(tmp_path, files['bert'], config_json=_json_bytes(top))
  assert 'not an object' in _user_error(lambda: hub.read_config(d), os.path.join(d, 'config.json'))


@FUZZ
@given(encoding=st.sampled_from(['utf-16', 'utf-32', 'latin-1', 'cp1252']))
def test_config_json_not_in_utf8(files, tmp_path, encoding):
  cfg = {**json.loads(_read(os.path.join(files['bert'], 'config.json'))), 'note': 'café'}  # é: never UTF-8 here
  d = _copy(tmp_path, files['bert'], config_json=_json_bytes(cfg, encoding))
  assert 'UTF-8' in _user_error(lambda: hub.read_config(d), os.path.join(d, 'config.json'))


def _bad_int(low):
  return st.one_of(st.integers(max_value=low - 1), st.floats(), st.text(max_size=4), st.booleans(), st.none(),
                   st.lists(st.integers(), max_size=2))


_NOT_A_NUMBER = st.one_of(st.text(max_size=4), st.booleans(), st.none(), st.lists(st.floats(), max_size=2))
BAD_BERT = {
    'vocab_size': _bad_int(1), 'hidden_size': _bad_int(1), 'num_hidden_layers': _bad_int(0),
    'num_attention_heads': _bad_int(1), 'intermediate_size': _bad_int(1), 'max_position_embeddings': _bad_int(1),
    'type_vocab_size': _bad_int(1),
    'hidden_dropout_prob': st.one_of(st.floats(min_value=1, exclude_min=True), st.floats(max_value=0, exclude_max=True),
                                     _NOT_A_NUMBER),
    'attention_probs_dropout_prob': st.one_of(st.floats(min_value=1, exclude_min=True), _NOT_A_NUMBER),
    'layer_norm_eps': st.one_of(st.floats(max_value=0), _NOT_A_NUMBER),
    'hidden_act': st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2),
                            st.text(max_size=6).filter(lambda s: s not in bert.ACTS)),
}
DROP = object()


def _with_field(tmp_path, src, field, value):
  """A copy of model directory `src` whose config.json has `field` set to `value` (or dropped)."""
  cfg = json.loads(_read(os.path.join(src, 'config.json')))
  if value is DROP:
    del cfg[field]
  else:
    cfg[field] = value
  return _copy(tmp_path, src, config_json=_json_bytes(cfg))


@FUZZ
@given(change=st.one_of(st.tuples(st.sampled_from(bert.REQUIRED_IN_FILE), st.just(DROP)),
                        st.sampled_from(sorted(BAD_BERT)).flatmap(lambda k: st.tuples(st.just(k), BAD_BERT[k]))))
def test_bert_config_fields_missing_or_mistyped(files, tmp_path, change):
  field, value = change
  d = _with_field(tmp_path, files['bert'], field, value)
  _user_error(lambda: _pretrained(d), os.path.join(d, 'config.json'), field)


@FUZZ
@given(data=st.data())
def test_bert_config_byte_flips(files, tmp_path, data):
  full = _read(os.path.join(files['bert'], 'config.json'))
  d = _copy(tmp_path, files['bert'], config_json=_flipped(data, full))
  # A flipped digit or letter inside a value can leave valid JSON and a valid config.
  _valid_or_user_error(lambda: bert.vocab_size({'config': d}), os.path.join(d, 'config.json'))


BAD_RESNET = {
    'depths': st.one_of(st.integers(), st.text(max_size=3), st.just([]), st.none(),
                        st.lists(st.integers(max_value=0), min_size=1, max_size=4),
                        st.lists(st.text(max_size=2), min_size=1, max_size=3)),
    'hidden_sizes': st.one_of(st.integers(), st.just([]), st.lists(st.floats(), min_size=1, max_size=4)),
    'embedding_size': _bad_int(1), 'num_channels': _bad_int(1),
    'layer_type': st.one_of(st.integers(), st.text(max_size=6).filter(lambda s: s not in ('basic', 'bottleneck'))),
}


@FUZZ
@given(change=st.one_of(st.tuples(st.sampled_from(['depths', 'hidden_sizes']), st.just(DROP)),
                        st.sampled_from(sorted(BAD_RESNET)).flatmap(lambda k: st.tuples(st.just(k), BAD_RESNET[k]))))
def test_resnet_config_fields_missing_or_mistyped(files, tmp_path, change):
  field, value = change
  d = _with_field(tmp_path, files['resnet'], field, value)
  _user_error(lambda: models.build({'name': 'resnet', 'config': d}, nnx.Rngs(0)), os.path.join(d, 'config.json'), field)


# ---- tokenizers ---------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_truncated_tokenizer_json(files, tmp_path, data):
  full = _read(os.path.join(files['tok'], 'tokenizer.json'))
  cut = data.draw(st.integers(1, full.rindex(b'}')), label='cut')
  d = _copy(tmp_path, files['tok'], tokenizer_json=full[:cut])
  _user_error(lambda: tokenizers.load_tokenizer(d), os.path.join(d, 'tokenizer.json'))


@FUZZ
@given(data=st.data())
def test_tokenizer_json_byte_flips(files, tmp_path, data):
  full = _read(os.path.join(files['tok'], 'tokenizer.json'))
  d = _copy(tmp_path, files['tok'], tokenizer_json=_flipped(data, full))
  # A flip inside a token string leaves a valid (different) tokenizer: a result or a UserError.
  _valid_or_user_error(lambda: tokenizers.load_tokenizer(d), d)


@FUZZ
@given(encoding=st.sampled_from(['utf-16', 'utf-32', 'latin-1', 'cp1252']), kind=st.sampled_from(['json', 'vocab']))
def test_tokenizer_files_not_in_utf8(files, tmp_path, encoding, kind):
  name = 'tokenizer.json' if kind == 'json' else 'vocab.txt'
  content = _read(os.path.join(files['tok'], name)).decode('utf-8')
  if kind == 'json':          # a token with an é: its latin-1 / cp1252 byte is never valid UTF-8 there
    tok = json.loads(content)
    tok['model']['vocab']['café'] = len(tok['model']['vocab'])
    content = json.dumps(tok, ensure_ascii=False)
  else:
    content += 'café\n'
  d = _copy(tmp_path, files['tok'], only=[name], **{name.replace('.', '_'): content.encode(encoding)})
  assert 'UTF-8' in _user_error(lambda: tokenizers.load_tokenizer(d), os.path.join(d, name))


def test_tokenizer_directory_without_files(tmp_path):
  _user_error(lambda: tokenizers.load_tokenizer(str(tmp_path)), str(tmp_path))


# ---- a loaded model is ready for inference ------------------------------------------------------
def test_from_pretrained_is_in_eval_mode_and_train_mode_needs_rngs(files):
  model, report = hf.from_pretrained(files['bert'], verbose=False)
  assert not report['initialised'] and not report['ignored']
  rng = np.random.default_rng(0)
  ids = rng.integers(1, TINY['vocab_size'], (2, 9))
  mask = np.ones((2, 9), np.int64)
  mask[1, 6:] = 0
  call = nnx.jit(lambda m, x, k: m(x, k))             # one compile instead of an eager one per op
  a, b = call(model, ids, mask), call(model, ids, mask)      # dropout 0.1 in the config, no rngs: eval mode
  np.testing.assert_array_equal(a.last_hidden_state, b.last_hidden_state)
  ref = transformers.BertModel.from_pretrained(files['bert']).eval()
  assert ref.config.hidden_dropout_prob == 0.1
  with torch.no_grad():
    r = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  np.testing.assert_allclose(a.last_hidden_state, r.last_hidden_state.numpy(), atol=1e-4)
  np.testing.assert_allclose(a.pooler_output, r.pooler_output.numpy(), atol=1e-4)
  model.train()
  msg = _user_error(lambda: model(ids, mask), 'BertModel', 'training mode', 'dropout 0.1', 'model.eval()')
  assert 'rngs=nnx.Rngs(dropout=' in msg
  with pytest.raises(UserError, match=r'model\.eval\(\)'):       # under jit too: a trace-time check
    call(model, ids, mask)
  # Training calls pass rngs and trace through dropout without the check (traced, not compiled: the
  # dropout graph's compile costs seconds; the trainer's own tests run it).
  out = nnx.eval_shape(lambda m: m(ids, mask, rngs=nnx.Rngs(dropout=0)), model)
  assert out.last_hidden_state.shape == (2, 9, TINY['hidden_size'])
