"""The embedded English corpus for MLM: CPython's pydoc topics plus standard-library docstrings.

Built as a TFDS dataset (array_record) on first use from the running Python's own files; one
document per topic or docstring (>= 80 characters; test packages skipped). A document goes to
`validation` when the md5 of its text is 0 mod 50 (about 2%), else to `train`.
"""
import ast
import hashlib
import os
import sysconfig

import tensorflow_datasets as tfds

NAME = 'ftjax_pydoc'
SKIP_DIRS = {'test', 'tests', 'idle_test', 'site-packages', 'dist-packages', '__pycache__', 'lib2to3'}


def documents():
  from pydoc_data.topics import topics
  for key in sorted(topics):
    yield f'topic:{key}', topics[key]
  root = sysconfig.get_paths()['stdlib']
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
    for fn in sorted(filenames):
      if not fn.endswith('.py'):
        continue
      path = os.path.join(dirpath, fn)
      try:
        with open(path, encoding='utf-8', errors='replace') as f:
          tree = ast.parse(f.read())
      except (SyntaxError, ValueError, OSError):
        continue
      for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
          doc = ast.get_docstring(node)
          if doc and len(doc) >= 80:
            yield f'{os.path.relpath(path, root)}:{getattr(node, "lineno", 0)}', doc


def is_validation(text: str) -> bool:
  return int(hashlib.md5(text.encode('utf-8', errors='replace')).hexdigest(), 16) % 50 == 0


class FtjaxPydoc(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                 features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(False), 'validation': self._generate_examples(True)}

  def _generate_examples(self, validation):
    seen = set()
    for key, text in documents():
      if text in seen or is_validation(text) != validation:
        continue
      seen.add(text)
      yield key, {'text': text}
