"""What a model family, a task and an evaluator must define: the contracts the trainer, the schema
(ftjax/defaults.py) and the transformers converter (ftjax/hf.py) rely on, in one place.

A component is one file found by name (ftjax/registry.py): `ftjax/models/<model.name>.py`,
`ftjax/tasks/<task.name>.py`, `ftjax/evals/<evals.<name>.type>.py`. tests/test_protocols.py checks that
every shipped one implements its protocol.
"""
from typing import Any, Protocol, runtime_checkable

from flax import nnx


@runtime_checkable
class ModelFamily(Protocol):
  """A module under ftjax/models. Its models return one output class (`Output`) whatever the head, with
  named fields (`logits`, `pooler_output`, ...) as transformers' ModelOutput classes."""
  Output: type
  HF_PREFIX: str                   # transformers' base-model prefix ('bert.'), optional on both sides

  def defaults(self) -> dict:
    """Every key `build` reads beyond models.COMMON, with its default: the schema (config.model)."""

  def build(self, cfg: dict, rngs: nnx.Rngs) -> nnx.Module:
    """The model from a config holding every key of models.COMMON (but name, lora) and defaults()."""

  def vocab_size(self, cfg: dict) -> int | None:
    """The vocabulary the model reads (checked against the tokenizer), None for non-text models."""

  def logical_axes(self, name: str, ndim: int) -> tuple:
    """Logical axis names (or None) per dimension of parameter `name` (dotted path), mapped to mesh axes
    by config.sharding_rules. Raises for a parameter it does not know: none is replicated by default."""

  def lr_layer(self, name: str) -> int | None:
    """Depth of parameter `name` for layer-wise lr decay (0 = embeddings / stem); None = the top."""

  def hf_name(self, path: tuple) -> tuple[str, str | None]:
    """ftjax parameter path -> (transformers name, layout: None, 'T' transposed, 'conv' HWIO <-> OIHW)."""

  def hf_config(self, model: nnx.Module) -> dict:
    """The transformers config.json of `model` (save_pretrained)."""


@runtime_checkable
class Task(Protocol):
  """`Task(config.task)` in a module under ftjax/tasks: the objective. The trainer knows nothing else."""

  def loss(self, model: nnx.Module, batch: dict, rng: Any = None) -> tuple[Any, dict]:
    """(mean loss, scalar metrics) of a batch; rng (a key) drives dropout, None = deterministic."""

  def predict(self, model: nnx.Module, batch: dict) -> dict:
    """Per-example outputs ('pred', 'label', 'loss', optional 'weight') that evaluators reduce."""

  def features(self, model: nnx.Module, batch: dict) -> Any:
    """Frozen features [B, D] for the probe, few-shot and k-NN evaluators."""


@runtime_checkable
class Evaluator(Protocol):
  """`Evaluator(name, cfg, *, config, predict_fn, embed_fn, mesh)` in a module under ftjax/evals, whose
  `DEFAULTS` dict names the keys it reads beyond evals.COMMON. Built once (data checked then), called
  with the train state; returns metrics prefixed with its name ('eval/accuracy')."""

  def __call__(self, state: Any) -> dict:
    ...
