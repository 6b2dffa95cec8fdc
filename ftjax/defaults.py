"""Every key any code reads, with its default: the trainer's here, the model family's from
`ftjax/models/<name>.py` (`defaults()`), each evaluator's from `ftjax/evals/<type>.py` (`DEFAULTS`).
Configs start from `base_config(<family>)` and `eval_config(type=...)` and override.

With the whole schema in the config, `--config.<key>=...` overrides are type-checked against a real
default, an unknown key fails before any compute, and the resolved config.json holds every setting.
"""
import ml_collections

from ftjax import evals, models, optim
from ftjax.errors import UserError
from ftjax.parallel import DEFAULT_RULES


def base_config(model: str = '') -> ml_collections.ConfigDict:
  """The trainer's defaults with model family `model`'s (a module under ftjax/models) in c.model."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000        # optimizer updates; see num_epochs
  c.num_epochs = -1.0         # > 0: overrides total_steps from the train split size
  c.log_every = 50
  c.mesh_shape = (-1,)        # -1: all remaining devices
  c.mesh_axes = ('data',)     # ('fsdp',): sharded parameters; ('data', 'model'): tensor parallel
  # logical axis -> mesh axes, for every parameter (ftjax/parallel.py); axes the mesh lacks are ignored
  c.sharding_rules = DEFAULT_RULES
  # Multi-process runs (launch/): coordinator 'host:port' (or $FTJAX_COORDINATOR, $FTJAX_NUM_PROCESSES,
  # $FTJAX_PROCESS_ID), or auto=True on a TPU pod (SLURM is detected). Seconds before a lost peer is fatal.
  c.distributed = ml_collections.ConfigDict(dict(coordinator='', num_processes=1, process_id=0, auto=False,
                                                 init_timeout=300, heartbeat_timeout=30))

  c.input = ml_collections.ConfigDict(dict(
      dataset='',             # TFDS name, path to .npz / image folder ('{split}' is substituted), or synthetic(...)
      data_dir='',            # TFDS data dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      train_split='train',
      batch_size=128,         # global batch, all processes and devices together
      pp_train='',            # preprocessing ops, e.g. 'random_crop(32, pad=4)|flip_lr|normalize'
      pp_eval='',
      num_threads=2,          # reader threads per process
      prefetch=4,             # batches read ahead on the host
      device_prefetch=2,      # batches copied to the devices ahead of the step (0 = none)
      # Text
      # model dir (tokenizer.json, vocab.txt, or GPT-2's vocab.json + merges.txt), or trained on the train
      # split once: 'train:<vocab size>' (WordPiece, BERT's specials), 'bpe:<vocab size>' (byte-level BPE, GPT-2's
      # <|endoftext|> ends documents and pads)
      tokenizer='',
      text_field='text',      # the field packed for MLM (input.pack) or causal LM (input.causal_pack)
      max_len=128,
      pack=False,             # documents -> fixed-length [CLS] ... [SEP] sequences (MLM pretraining)
      nsp=False,              # with pack: sentence pairs and next_sentence_label
      # documents + EOS, concatenated and cut into max_len blocks, streamed (causal-LM pretraining)
      causal_pack=False,
      doc_mask=False,         # with causal_pack: segment_ids keep attention and the loss inside each document
      block_shuffle=1000,     # with causal_pack: train blocks shuffled in windows of this many (0 = in order)
  ))

  # models.COMMON (name, dtype, remat, config, lora) and the family's own keys (models.defaults).
  c.model = ml_collections.ConfigDict(models.defaults(model))
  # inputs: the batch keys passed to the model, in order. num_labels=1 in classification = regression.
  # train_mode=False runs the model in eval mode while training (BatchNorm keeps its running
  # statistics, no dropout): what a linear probe on frozen features wants.
  # temperature, augment: the contrastive (SimCLR) task; its images arrive in [0, 1].
  c.task = ml_collections.ConfigDict(dict(
      name='classification', label_smoothing=0.0, inputs=('image',), nsp_weight=1.0, train_mode=True,
      temperature=0.1,
      augment=dict(crop_min=0.08, flip=0.5, jitter=1.0, gray=0.2, blur=0.5, normalize=(0.5, 0.5), size=0)))

  c.optim = ml_collections.ConfigDict(dict(
      name='adamw',           # adamw | sgd | lamb | lars
      lr=1e-3,
      weight_decay=0.0,       # decoupled; never applied to biases or norm scales
      b1=0.9, b2=0.999, eps=1e-8,
      momentum=0.9, nesterov=False,   # sgd, lars
      trust_coefficient=0.001,        # lars
      clip_norm=0.0,          # global-norm clipping; 0 = off
      accum_steps=1,          # split each batch into this many micro-batches, one update
      # Which parameters train (regexes over dotted names, e.g. 'bert.encoder.layer.3.output.dense.kernel'):
      trainable='',           # only these ('head' = linear probe, 'lora_' = adapters); '' = all
      freeze='',              # none of these
      layer_decay=1.0,        # layer-wise lr decay: layer l of L gets lr * layer_decay ** (L - l)
      # An exponential moving average of the parameters, kept in the optimizer state (checkpointed, sharded
      # like the parameters): ema = decay * ema + (1 - decay) * params after each update, from the initial
      # parameters, no debiasing. 0 = off. ema_eval: evaluators (and ftjax.evaluate) score the EMA weights.
      ema_decay=0.0,
      ema_eval=False,
  ))
  c.schedule = ml_collections.ConfigDict(dict(
      name='cosine',          # cosine | linear | constant (after warmup)
      warmup_steps=0,
      end_factor=0.0,         # final lr = lr * end_factor (cosine, linear)
  ))

  # Pretrained initialisation, used when the workdir has no checkpoint yet. source: a transformers
  # directory ('package:<name>' for one shipped in a pip package, or a Hugging Face Hub id such as
  # 'bert-base-uncased', read from the Hub's cache) or an ftjax workdir / checkpoint.
  # Parameters are matched by name and shape; `reinit` (a regex over names) keeps matches fresh.
  # weights: from an ftjax checkpoint, its raw parameters ('params') or their EMA ('ema', optim.ema_decay).
  c.init = ml_collections.ConfigDict(dict(source='', reinit='', weights='params'))

  # name -> dict(type=..., split=..., every=..., batch_size=...). Metrics are logged as '<name>/<metric>'.
  c.evals = ml_collections.ConfigDict()

  c.checkpoint = ml_collections.ConfigDict(dict(
      every=500,              # save every K steps (and at the end, and on SIGTERM/SIGINT)
      keep=2,                 # latest checkpoints kept
      best_metric='',         # e.g. 'eval/accuracy': also keep the best checkpoint by it
      best_mode='max',
      async_save=True,
  ))
  # A jax.profiler trace of steps start_step .. start_step + num_steps - 1 (counted from 1, as the log
  # counts them; step 1 compiles) into <workdir>/tb, for XProf / TensorBoard's Profile tab. 0 steps = off.
  c.profile = ml_collections.ConfigDict(dict(start_step=2, num_steps=0))
  return c


def eval_config(type: str = 'classification', **kw) -> ml_collections.ConfigDict:   # noqa: A002 (the config key)
  """An evaluator entry with every key of its type (evals.COMMON + the type's DEFAULTS); a key the type
  does not read is an error."""
  return evals.resolve(f'eval_config(type={type!r})', dict(type=type, **kw))


def complete(config) -> ml_collections.ConfigDict:
  """A run config with every key its model family and evaluators read (their defaults where absent),
  or one UserError naming the first key no code reads: the one check before compute."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model = ml_collections.ConfigDict(models.resolve(config.model))
    for name in list(config.evals):
      config.evals[name] = evals.resolve(f'evals.{name}', config.evals[name])
  _check_keys(config, base_config(config.model.name), '')
  optim.check_ema(config.get('optim', {}))
  weights = config.get('init', {}).get('weights', 'params')
  if weights not in ('params', 'ema'):
    raise UserError(f'init.weights={weights!r}; choose params or ema (the EMA an ftjax run kept, optim.ema_decay)')
  if 'profile' in config:
    profile_steps(config.profile)
  return config


def profile_steps(profile, total_steps: int | None = None) -> range:
  """The steps config.profile traces (empty when off), or one UserError naming the key. total_steps is
  known only once the data are (num_epochs); without it only the values themselves are checked."""
  for k in ('start_step', 'num_steps'):
    v = profile[k]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise UserError(f'profile.{k}={v!r}: expected an integer >= 0')
  first, n = profile.start_step, profile.num_steps
  if not n:
    return range(0)
  if first < 1:
    raise UserError(f'profile.start_step={first}: steps count from 1 (step 1 includes compilation)')
  if total_steps is not None and first + n - 1 > total_steps:
    raise UserError(f'profile.start_step={first}, profile.num_steps={n}: steps {first}-{first + n - 1} go past '
                    f'total_steps={total_steps}')
  return range(first, first + n)


FREE = ('evals', 'model')     # their keys depend on the evaluator types and the family: checked above


def _check_keys(config, schema, prefix):
  for k in config:
    if k not in schema:
      raise UserError(f'{prefix}{k}: no such key in the config (it has {", ".join(sorted(schema))})')
    if isinstance(schema[k], ml_collections.ConfigDict) and not (prefix == '' and k in FREE):
      _check_keys(config[k], schema[k], f'{prefix}{k}.')
