"""ftjax.generate against transformers' own generate, on a random tiny GPT-2 saved by transformers: greedy
tokens equal token for token on a left-padded batch; the KV-cache loop equals full recomputation; a
2 x 4 ('data', 'model') mesh equals one device; sampling is a function of the seed. One model, one
batch shape, few compiled programs (each sampler setting is one)."""
import contextlib
import io
import json

import numpy as np
import pytest

VOCAB, N_POS, NEW = 320, 64, 20
EOS, PAD = 0, 1                   # <|endoftext|> is the tokenizer's first token
PROMPTS = [[17, 250, 3, 99, 41], [5, 61, 200, 7, 7, 150, 33, 2, 280, 12, 64]]     # 5 and 11 tokens
TEXTS = ['the cat sat on the mat', 'a tiny model writes tiny words', 'hello world, hello tokens']


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  """A random transformers GPT-2 of non-default sizes and its byte-level BPE tokenizer, as from the hub."""
  import tokenizers
  import torch
  import transformers
  d = tmp_path_factory.mktemp('gpt2')
  cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=N_POS, n_embd=64, n_layer=2, n_head=4, n_inner=96,
                                initializer_range=0.1, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD)
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(d)
  tok = tokenizers.ByteLevelBPETokenizer()
  tok.train_from_iterator(TEXTS * 20, vocab_size=VOCAB, min_frequency=1, special_tokens=['<|endoftext|>'],
                          show_progress=False)
  assert tok.token_to_id('<|endoftext|>') == EOS and tok.get_vocab_size() <= VOCAB
  tok.save(str(d / 'tokenizer.json'))
  tok.save_model(str(d))             # vocab.json + merges.txt, as GPT-2 directories have
  return str(d)


@pytest.fixture(scope='module')
def model(hf_dir):
  from ftjax import cli, hf
  cli.enable_compilation_cache()     # as the command line does: its own from_pretrained then compiles nothing
  return hf.from_pretrained(hf_dir, head='lm', verbose=False)[0]


@pytest.fixture(scope='module')
def greedy(model):
  from ftjax.generate import generate
  return generate(model, PROMPTS, max_new_tokens=NEW)


HOT = dict(temperature=3.0, top_k=100, top_p=0.95, seed=1)


@pytest.fixture(scope='module')
def sampled(model):
  from ftjax.generate import generate
  return generate(model, PROMPTS, max_new_tokens=NEW, **HOT)


def hf_generate(hf_dir, prompts, **kw):
  """transformers' generate on the same left-padded batch; new tokens per row, cut after EOS."""
  import torch
  import transformers
  m = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
  width = max(map(len, prompts))
  ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
  mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
  with torch.no_grad():
    out = m.generate(ids, attention_mask=mask, pad_token_id=PAD, eos_token_id=EOS, **kw)[:, width:].tolist()
  return [row[:row.index(EOS) + 1] if EOS in row else row for row in out]


def test_greedy_equals_transformers_generate(hf_dir, greedy):
  expected = hf_generate(hf_dir, PROMPTS, do_sample=False, max_new_tokens=NEW)
  assert greedy == expected
  assert sum(map(len, greedy)) > NEW, greedy        # not both rows stopped at once by EOS: a real comparison


def test_kv_cache_equals_full_recomputation(model, greedy):
  from ftjax.generate import generate
  assert generate(model, PROMPTS, max_new_tokens=NEW, use_cache=False) == greedy


def test_eos_cuts_each_row_after_its_first_eos(model, greedy):
  from ftjax.generate import generate
  from ftjax.generate import _generate
  programs, eos = _generate._cache_size(), greedy[0][3]
  out = generate(model, PROMPTS, max_new_tokens=NEW, eos_id=eos)
  assert out == [row[:row.index(eos) + 1] if eos in row else row for row in greedy]
  assert _generate._cache_size() == programs                     # eos is an argument: no recompile


def test_sampling_is_a_function_of_the_seed(model, greedy, sampled):
  from ftjax.generate import _generate, generate
  sample = lambda **kw: generate(model, PROMPTS, max_new_tokens=NEW, **kw)
  programs = _generate._cache_size()
  assert sample(**HOT) == sampled
  assert sample(**{**HOT, 'seed': 2}) != sampled and sampled != greedy
  assert sample(temperature=1.0, top_k=1) == greedy              # one candidate left: the argmax
  assert sample(temperature=1.0, top_p=1e-6) == greedy           # the nucleus always keeps the top token
  assert _generate._cache_size() == programs                     # one program for every sampling setting


def test_top_k_and_top_p_keep_what_transformers_keeps():
  import jax
  import torch
  from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
  from ftjax.generate import truncate
  logits = np.random.default_rng(0).normal(size=(8, 50)).astype(np.float32) * 3
  run = jax.jit(truncate)
  for k, p in ((0, 1.0), (1, 1.0), (7, 1.0), (50, 1.0), (0, 0.5), (0, 0.95), (10, 0.8), (3, 1e-6)):
    t = torch.tensor(logits)
    t = TopKLogitsWarper(k)(None, t) if k else t
    t = TopPLogitsWarper(p)(None, t) if p < 1 else t
    got = np.asarray(run(logits, np.int32(k), np.float32(p)))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(t.numpy()), err_msg=f'top_k={k} top_p={p}')
    np.testing.assert_array_equal(got[~np.isinf(got)], logits[~np.isinf(got)])


def test_tensor_parallel_mesh_gives_the_same_tokens(model, greedy, sampled):
  import jax
  from jax.sharding import PartitionSpec as P
  from ftjax import parallel
  from ftjax.generate import generate, place
  mesh = parallel.make_mesh((2, 4), ('data', 'model'))
  assert mesh.size == 8 and jax.device_count() == 8
  _, params, _ = place(model, mesh)          # laid out as training lays it out: Megatron-style, by the rules
  layer = params['transformer']['h'][0]
  assert layer['attn']['c_attn']['kernel'].sharding.spec == P(None, 'model')
  assert layer['mlp']['c_proj']['kernel'].sharding.spec == P('model', None)
  assert params['transformer']['wte']['embedding'].sharding.spec == P('model', None)
  assert generate(model, PROMPTS, max_new_tokens=NEW, mesh=mesh) == greedy
  assert generate(model, PROMPTS, max_new_tokens=NEW, mesh=mesh, **HOT) == sampled    # vocabulary split 4 ways


def test_bucket_and_too_long_prompt(model):
  from ftjax.errors import UserError
  from ftjax.generate import bucket, generate
  assert [bucket(n, 44) for n in (1, 5, 16, 17, 33, 44)] == [16, 16, 16, 32, 44, 44]
  with pytest.raises(UserError, match=r'50 tokens: with max_new_tokens=20 that is 70 positions, but the model has '
                                      r'n_positions=64 \(at most 44 prompt tokens\)'):
    generate(model, [[3] * 50], max_new_tokens=NEW)
  with pytest.raises(UserError, match='outside the vocabulary'):
    generate(model, [[VOCAB]], max_new_tokens=NEW)


def cli(*args):
  from ftjax import generate
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = generate.main(['ftjax.generate', *args])
  return code, out.getvalue(), err.getvalue()


def test_command_line_prints_continuations(hf_dir, model):
  from ftjax.data.tokenizers import load_tokenizer
  from ftjax.generate import generate
  tok = load_tokenizer(hf_dir)
  prompts = [tok.encode(t).ids for t in TEXTS[:2]]
  expected = [tok.decode(ids, skip_special_tokens=True) for ids in generate(model, prompts, max_new_tokens=NEW)]
  code, out, err = cli(f'--init={hf_dir}', f'--prompt={TEXTS[0]}', f'--max_new_tokens={NEW}')
  assert (code, err) == (0, ''), err
  assert out == expected[0] + '\n' and expected[0].strip()


def test_command_line_errors_are_one_line(hf_dir, tmp_path):
  bert = tmp_path / 'bert'
  bert.mkdir()
  (bert / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps({'model': {'name': 'bert', 'head': 'mlm'}}))
  cases = {
      ('--prompt=x',): 'exactly one of --workdir',
      (f'--init={hf_dir}', f'--workdir={run}', '--prompt=x'): 'exactly one of --workdir',
      (f'--init={hf_dir}',): 'exactly one of --prompt',
      (f'--init={bert}', '--prompt=x'): "model_type='bert'",
      (f'--workdir={tmp_path / "nope"}', '--prompt=x'): 'no such directory',
      (f'--workdir={run}', '--prompt=x'): 'generation needs a GPT-2',
      (f'--init={hf_dir}', '--prompt=' + 'hello world ' * 40, '--max_new_tokens=20'): 'n_positions=64',
      (f'--init={hf_dir}', '--prompt=x', '--max_new_tokens=many'): 'max_new_tokens',
  }
  for args, message in cases.items():
    code, out, err = cli(*args)
    assert (code, out) == (2, ''), (args, out, err)
    assert err.startswith('ftjax: error: ') and err.count('\n') == 1 and message in err, (args, err)
  assert [p.name for p in run.iterdir()] == ['config.json']      # nothing written
