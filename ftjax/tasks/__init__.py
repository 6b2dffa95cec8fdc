"""Task registry: `config.task.name` is a module under ftjax.tasks that defines `Task(cfg)`.

A task turns a model and a batch into (loss, metrics) for training and per-example outputs for
evaluators; the trainer knows nothing else about the objective.
"""
import jax.numpy as jnp
from flax import nnx

from ftjax import registry


def build(cfg):
  return registry.load('tasks', cfg.name, 'task.name').Task(cfg)


# ---- Helpers every task uses --------------------------------------------------------------------
def call(model, batch, inputs, rng=None, **kw):
  """model(*batch[inputs], rngs=...) with dropout keys derived from `rng` (train mode only): the
  family's output object (`.logits`, ...)."""
  return model(*(batch[k] for k in inputs), rngs=nnx.Rngs(dropout=rng) if rng is not None else None, **kw)


def embed(model, batch, inputs):
  """Frozen features for the probe evaluators: the model's `embed` (pooled, before any head)."""
  return model.embed(*(batch[k] for k in inputs)).astype(jnp.float32)
