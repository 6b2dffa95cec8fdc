"""scikit-learn's bundled digits as a TFDS dataset (array_record), built on first use, no download.

Split (fixed forever, independent of any run seed): the 1,797 images are permuted with
numpy's default_rng(0); the first 1,257 are `train`, the next 270 `validation`, the last 270 `test`.
Pixels 0..16 are scaled by 16 (clipped to 255) into uint8 8x8x1 images.
"""
import numpy as np
import tensorflow_datasets as tfds

NAME = 'ftjax_digits'
SPLITS = {'train': (0, 1257), 'validation': (1257, 1527), 'test': (1527, 1797)}


class FtjaxDigits(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Fixed 1257/270/270 split of sklearn.datasets.load_digits.'}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description='scikit-learn digits (UCI optical recognition of handwritten digits, test part).',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    return {name: self._generate_examples(lo, hi) for name, (lo, hi) in SPLITS.items()}

  def _generate_examples(self, lo, hi):
    from sklearn.datasets import load_digits
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    for i in order[lo:hi]:
      img = np.minimum(d.images[i] * 16, 255).astype(np.uint8)[..., None]
      yield int(i), {'image': img, 'label': int(d.target[i])}
