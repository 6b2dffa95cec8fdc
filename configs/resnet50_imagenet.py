"""ResNet-50 v1.5 on ImageNet-1k, the standard recipe (Goyal et al. 2017; torchvision / big_vision).

SGD + Nesterov 0.9, lr 0.1 per 256 examples, 5 warmup epochs then cosine, 90 epochs, weight decay
1e-4 (not on biases / BatchNorm), label smoothing 0.1, zero-init last BN of each block, bf16 compute.
Expect ~76.5-77% top-1. Needs TFDS `imagenet2012` prepared as array_record (manual download):
  tfds build imagenet2012 --file_format=array_record --manual_dir=DIR
  python -m ftjax.main --config=configs/resnet50_imagenet.py --workdir=runs/r50
  python -m ftjax.main --config=configs/resnet50_imagenet.py:smoke --workdir=/tmp/r50   # generated data
"""
from ftjax.defaults import base_config, eval_config

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  smoke = arg == 'smoke'
  c = base_config('resnet')
  c.input.batch_size = 16 if smoke else 1024
  c.num_epochs = -1.0 if smoke else 90.0
  c.total_steps = 4 if smoke else -1
  c.log_every = 1 if smoke else 100
  size = 32 if smoke else 224

  c.input.dataset = 'synthetic(n=64, size=40, classes=10)' if smoke else 'imagenet2012'
  c.input.pp_train = f'inception_crop({size})|flip_lr|normalize(mean={MEAN}, std={STD})'
  c.input.pp_eval = f'resize_small({size * 8 // 7})|central_crop({size})|normalize(mean={MEAN}, std={STD})'
  c.input.num_threads = 2 if smoke else 16
  c.input.prefetch = 2 if smoke else 8

  c.model.depth = 50
  c.model.stages = (1, 1, 1, 1) if smoke else None     # smoke: one bottleneck block per stage
  c.model.width = 0.125 if smoke else 1.0
  c.model.num_classes = 10 if smoke else 1000
  c.model.zero_init_residual = True
  c.model.dtype = 'bfloat16'

  c.task.label_smoothing = 0.1
  c.optim.name = 'sgd'
  c.optim.lr = 0.1 * c.input.batch_size / 256
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 1e-4
  c.schedule.name = 'cosine'
  steps_per_epoch = TRAIN_IMAGES // c.input.batch_size
  c.schedule.warmup_steps = 1 if smoke else 5 * steps_per_epoch

  c.evals.eval = eval_config(split='validation', every=0 if smoke else 5 * steps_per_epoch,
                             batch_size=16 if smoke else 1000)
  c.checkpoint.every = 1000 if smoke else 2 * steps_per_epoch
  c.checkpoint.keep = 2
  c.checkpoint.best_metric = 'eval/accuracy'
  return c
