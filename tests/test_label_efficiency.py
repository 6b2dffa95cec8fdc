"""configs/label_efficiency.py: the demo's arms over labelled-set sizes, its report and sweep.png (a file of its
own: with one file per worker, it runs beside the demo's smoke run, not after it)."""
import json

from PIL import Image

from conftest import run_main


def test_label_efficiency_smoke_sweeps_labelled_set_sizes_over_seeds(tmp_path):
  w = tmp_path / 'le'
  r = run_main('--config=configs/label_efficiency.py:smoke', f'--workdir={w}', timeout=900)     # one device
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.loads((w / 'report.json').read_text())
  cells = [(x['task'], x['init'], x.get('seed')) for x in rows if 'aggregate' not in x]
  expected = [(f'{t} @ {n}', v, k) for t in ('digits', 'sentiment text') for n in (50, 100)
              for v in ('scratch', 'pretrained') for k in (0,)]
  assert sorted(cells, key=str) == sorted(expected + [(f'sentiment text @ {n}', 'minilm', None) for n in (50, 100)], key=str)
  # Each size really trained on its own labelled subset.
  assert json.loads((w / 'digits_50_scratch/s0/config.json').read_text())['input']['train_split'] == 'train[:50]'
  assert json.loads((w / 'minilm_100/evaluate.json').read_text())['metrics']['test/accuracy'] > 0
  md = (w / 'report.md').read_text()
  assert '| digits @ 50 | test_accuracy |' in md and '![sweep](sweep.png)' in md
  with Image.open(w / 'sweep.png') as im:
    assert im.size[0] > 500

