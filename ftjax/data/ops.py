"""Preprocessing ops, chained by a big_vision-style string: `'inception_crop(224)|flip_lr|normalize'`.

An op factory takes literal arguments and returns fn(example, rng) -> example. Random ops draw from
the per-example numpy Generator that grain derives from (seed, index), so every epoch is
reproducible and resumable. Factories that declare a `tok` argument get the run's tokenizer.
A leaf: image_ops.py and text_ops.py register their ops here when imported, and pipeline.py imports
them, so OPS is complete once `ftjax.data` is.
"""
import inspect

from ftjax.data.calls import parse_call
from ftjax.errors import UserError

OPS = {}


def register(fn):
  OPS[fn.__name__] = fn
  return fn


def parse(spec: str, **context):
  """'a(1)|b' -> one function (example, rng) -> example. Empty spec: identity. `context` supplies
  arguments such as the tokenizer (`tok`) to the factories that declare them."""
  fns = []
  for part in filter(None, (p.strip() for p in (spec or '').split('|'))):
    name, args, kwargs = parse_call(part)
    if name not in OPS:
      raise UserError(f'unknown preprocessing op {name!r} in {spec!r}; known: {", ".join(sorted(OPS))}')
    factory = OPS[name]
    wanted = {k: v for k, v in context.items() if k in inspect.signature(factory).parameters and k not in kwargs}
    try:
      fns.append(factory(*args, **kwargs, **wanted))
    except TypeError as e:
      raise UserError(f'bad arguments for op {part!r}: {e}') from None

  def apply(ex, rng):
    for f in fns:
      ex = f(ex, rng)
    return ex
  return apply
