"""SimCLR v2-style pretraining of a ResNet-50 on ImageNet-1k at batch 4096 (Chen et al. 2020).

LARS, lr 0.3 x batch / 256 = 4.8, weight decay 1e-6 (not on biases / norms), 10 warmup epochs then
cosine, 100 epochs, temperature 0.1, 3-layer projection 2048-2048-128, global BatchNorm and
negatives over the whole batch on any number of devices. Views are made on the accelerator from
256 px centre crops the host ships (random resized 224 px crops of those, colour jitter 1.0, grey,
blur). Expect ~64-66% linear-probe top-1 at 100 epochs (SimCLR paper, Fig. B.1: ~64.5%).
  python -m ftjax.main --config=configs/simclr_imagenet.py --workdir=runs/simclr
  python -m ftjax.main --config=configs/simclr_imagenet.py:smoke --workdir=/tmp/simclr   # generated data
"""
from ftjax.defaults import base_config, eval_config

TRAIN_IMAGES = 1_281_167
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('resnet')
  c.input.batch_size = 16 if smoke else 4096
  c.num_epochs = -1.0 if smoke else 100.0
  c.total_steps = 4 if smoke else -1
  c.log_every = 1 if smoke else 100
  size = 32 if smoke else 224

  c.input.dataset = 'synthetic(n=64, size=40, classes=10)' if smoke else 'imagenet2012'
  host = f'resize_small({size * 8 // 7})|central_crop({size * 8 // 7})|normalize(0, 1)'
  c.input.pp_train = c.input.pp_eval = host
  c.input.num_threads = 2 if smoke else 32
  c.input.prefetch = 2 if smoke else 8

  c.model.depth = 50
  c.model.stages = (1, 1, 1, 1) if smoke else None     # smoke: one bottleneck block per stage
  c.model.width = 0.125 if smoke else 1.0
  c.model.num_classes = 0
  c.model.projection = (64, 64, 32) if smoke else (2048, 2048, 128)
  c.model.dtype = 'bfloat16'

  c.task.name = 'contrastive'
  c.task.temperature = 0.1
  c.task.augment.update(crop_min=0.08, flip=0.5, jitter=1.0, gray=0.2, blur=0.5, normalize=(MEAN, STD), size=size)

  c.optim.name = 'lars'
  c.optim.lr = 0.3 * c.input.batch_size / 256
  c.optim.weight_decay = 1e-6
  c.optim.momentum = 0.9
  c.schedule.name = 'cosine'
  c.schedule.warmup_steps = 1 if smoke else 10 * TRAIN_IMAGES // c.input.batch_size

  # Probes on frozen features: a fixed 5% of the train split keeps host memory small.
  few = dict(batch_size=16 if smoke else 1024, train_split='train' if smoke else 'train[:5%]')
  c.evals.knn = eval_config(type='knn', split='validation', k=20, every=0, **few)
  c.evals.probe = eval_config(type='linear_probe', split='validation', every=0, **few)
  c.evals.fewshot = eval_config(type='fewshot', split='validation', shots=(1, 5, 10, 25), **few)
  c.checkpoint.every = 1000 if smoke else 2 * TRAIN_IMAGES // c.input.batch_size
  return c
