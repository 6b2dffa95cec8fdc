"""Parameter names: a pytree path as the dotted string every name-based feature matches against
('bert.encoder.layer.0.output.dense.kernel') - freezing, layer-wise decay, sharding rules,
checkpoint merging, transformers conversion all use these, so one pattern means the same everywhere."""
import jax


def key_name(k) -> str:
  """One path entry: a dict key, a list index (restored checkpoints store it as '0'), an attribute."""
  return str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))))


def parts(path) -> tuple:
  return tuple(key_name(k) for k in path)


def dotted(path) -> str:
  return '.'.join(parts(path))


def names(tree):
  """The same tree with each leaf replaced by its dotted name."""
  return jax.tree_util.tree_map_with_path(lambda p, _: dotted(p), tree)


def flat(tree) -> dict:
  """{dotted name: leaf}, in the tree's flattening order."""
  return {dotted(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
