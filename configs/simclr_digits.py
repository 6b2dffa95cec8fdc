"""SimCLR on scikit-learn's 8x8 digits, labels unused: a quarter-width ResNet-18 learns features whose
linear probe, few-shot and k-NN accuracies are logged (the labels are only read by those evaluators).

  python -m ftjax.main --config=configs/simclr_digits.py --workdir=runs/simclr_digits
  # random-init baseline, same evaluators:  python -m ftjax.evaluate --config=configs/simclr_digits.py --workdir=runs/random
  # fine-tune it:  configs/resnet_digits.py with --config.init.source=runs/simclr_digits
"""
from ftjax.defaults import base_config, eval_config


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('resnet')
  c.total_steps = 6 if smoke else 300
  c.log_every = 2 if smoke else 25

  c.input.dataset = 'ftjax_digits'
  c.input.batch_size = 32 if smoke else 256
  c.input.pp_train = c.input.pp_eval = 'normalize(0, 1)'      # [0, 1]: the task augments, then normalises

  c.model.depth = 18
  c.model.width = 0.125 if smoke else 0.25
  c.model.stem = 'small'
  c.model.in_channels = 1
  c.model.num_classes = 0                         # no head: features -> projector
  c.model.zero_init_residual = False              # a zero-initialised residual makes random-init features degenerate
  c.model.projection = (64, 32) if smoke else (256, 64)

  c.task.name = 'contrastive'
  c.task.temperature = 0.2
  # 8 px grey digits: gentle crops, no flips (a flipped 2 is no 2), brightness/contrast only.
  c.task.augment.update(crop_min=0.4, flip=0.0, jitter=0.5, gray=0.0, blur=0.0, normalize=(0.5, 0.5))

  c.optim.name = 'lars'
  c.optim.lr = 1.0
  c.optim.weight_decay = 1e-6
  c.schedule.name = 'cosine'
  c.schedule.warmup_steps = 1 if smoke else 30

  probe = dict(type='linear_probe', split='validation', batch_size=256, steps=50 if smoke else 200)   # L-BFGS steps
  c.evals.probe = eval_config(**probe, every=0 if smoke else 100)
  c.evals.probe_test = eval_config(**{**probe, 'split': 'test'})
  c.evals.probe_250 = eval_config(**{**probe, 'split': 'test', 'train_split': 'train[:250]'})   # few labels
  c.evals.fewshot = eval_config(type='fewshot', split='test', shots=(1, 5, 10, 25))
  c.evals.knn = eval_config(type='knn', split='test', k=20)
  c.checkpoint.every = 100
  return c
