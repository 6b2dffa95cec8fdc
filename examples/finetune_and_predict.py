"""Fine-tune a small BERT on labelled tweets from Python, then label new sentences with its best checkpoint.

  python examples/finetune_and_predict.py --workdir=runs/example [--smoke]

The config is a shipped one (configs/text_finetune.py), changed in Python before the run; rerunning
resumes or skips the finished run, as `python -m ftjax.main` does.
"""
import argparse
import os
import sys

import ftjax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ('negative', 'neutral', 'positive')        # ftjax_sentiment's classes, in label order
SENTENCES = ['What a wonderful day, I love this!',
             'The flight was delayed again and nobody told us anything.',
             'The meeting is at 3pm in room 204.']


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--smoke', action='store_true', help='a few steps on a few examples')
  args = parser.parse_args(argv)

  try:
    config = ftjax.get_config(os.path.join(ROOT, 'configs', 'text_finetune.py') + (':smoke' if args.smoke else ''))
    # From scratch, self-contained: a WordPiece vocabulary trained on the train split instead of the
    # masked-LM run's (configs/text_mlm.py; with that run, also set config.init.source to it).
    config.input.tokenizer = 'train:4000'
    config.checkpoint.best_metric = 'eval/accuracy'   # keep the checkpoint that scores best on validation
    if args.smoke:
      config.evals.eval.every = 2                     # as the full config's every 50 steps: a best to pick
    result = ftjax.run(config, args.workdir)
    run = ftjax.load(args.workdir)                  # best=True: best/<step>; best=False: the latest
  except ftjax.UserError as e:
    sys.exit(f'error: {e}')
  print(f'trained to step {result.step}; best eval/accuracy at step {run.step} ({run.path})')
  for text, logits in zip(SENTENCES, run.predict(SENTENCES)):
    print(f'{LABELS[int(logits.argmax())]:>8}  {text}')


if __name__ == '__main__':
  main()
