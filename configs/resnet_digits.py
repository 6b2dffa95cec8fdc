"""ResNet-18 (quarter width, small stem) on scikit-learn's 8x8 digits: the default embedded job.

Needs nothing but the package: the digits TFDS dataset is built on first use.
  python -m ftjax.main --config=configs/resnet_digits.py --workdir=runs/digits
  python -m ftjax.main --config=configs/resnet_digits.py:smoke --workdir=/tmp/smoke   # seconds, for tests
"""
from ftjax.defaults import base_config, eval_config


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('resnet')
  c.seed = 0
  c.total_steps = 20 if smoke else 400     # ~41 epochs
  c.log_every = 5 if smoke else 50

  c.input.dataset = 'ftjax_digits'
  c.input.train_split = 'train'                 # 1257 images; validation 270; test 270
  c.input.batch_size = 32 if smoke else 128
  c.input.pp_train = 'random_crop(8, pad=1)|normalize(0.5, 0.5)'
  c.input.pp_eval = 'normalize(0.5, 0.5)'

  c.model.depth = 18
  c.model.width = 0.125 if smoke else 0.25   # 16-128 channels, 0.7 M parameters
  c.model.stem = 'small'                        # 3x3 stride-1 stem, no max-pool: 8 px inputs
  c.model.in_channels = 1
  c.model.num_classes = 10

  c.task.name = 'classification'
  c.task.label_smoothing = 0.1

  c.optim.name = 'adamw'
  c.optim.lr = 3e-3
  c.optim.weight_decay = 0.05
  c.optim.clip_norm = 1.0
  c.schedule.name = 'cosine'
  c.schedule.warmup_steps = 2 if smoke else 50

  c.evals.eval = eval_config(split='validation', every=10 if smoke else 100)
  c.evals.test = eval_config(split='test', every=0)   # 0: once, at the end
  c.checkpoint.every = 10 if smoke else 250
  c.checkpoint.best_metric = 'eval/accuracy'
  return c
