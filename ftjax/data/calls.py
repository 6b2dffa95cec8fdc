"""The `name` / `name(literal args)` syntax shared by op specs (ops.py) and generated datasets
(`synthetic(n=64)`, sources.py): a leaf, so that neither stage imports the other."""
import ast

from ftjax.errors import UserError


def parse_call(text):
  try:
    node = ast.parse(text.strip(), mode='eval').body
    if isinstance(node, ast.Name):
      return node.id, (), {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      args = tuple(ast.literal_eval(a) for a in node.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
      return node.func.id, args, kwargs
  except (SyntaxError, ValueError):
    pass
  raise UserError(f'cannot parse op {text!r}: expected name or name(literal args)')
