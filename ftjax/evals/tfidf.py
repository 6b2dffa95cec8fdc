"""Baseline to report beside a fine-tuned text model: TF-IDF (word 1-2 grams) + logistic regression,
fit on the train split, scored on this evaluator's split. It ignores the model; computed once."""
import numpy as np

from ftjax import data
from ftjax.data.sources import as_text
from ftjax.errors import UserError


DEFAULTS = {}      # only evals.COMMON: fit on input.train_split, scored on split


class Evaluator:

  def __init__(self, name, cfg, *, config, **_):
    self.name, self.cfg, self.input, self._result = name, cfg, config.input, None

  def _texts(self, split):
    src = data.get_source(self.input.dataset, split, self.input.data_dir)
    rows = [src[i] for i in range(len(src))]
    try:
      return [as_text(r[self.input.text_field]) for r in rows], np.array([int(r['label']) for r in rows])
    except (KeyError, ValueError, TypeError) as e:
      raise UserError(f'evals.{self.name} (tfidf): dataset {self.input.dataset!r} split {split!r} needs a text '
                      f'field input.text_field={self.input.text_field!r} and integer labels ({type(e).__name__}: '
                      f'{e})') from None

  def __call__(self, state) -> dict:
    if self._result is None:
      from sklearn.feature_extraction.text import TfidfVectorizer
      from sklearn.linear_model import LogisticRegression
      x_train, y_train = self._texts(self.input.train_split)
      x_test, y_test = self._texts(self.cfg.split)
      vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
      clf = LogisticRegression(C=10.0, max_iter=2000).fit(vec.fit_transform(x_train), y_train)
      acc = float(np.mean(clf.predict(vec.transform(x_test)) == y_test))
      self._result = {f'{self.name}/accuracy': acc}
    return self._result
