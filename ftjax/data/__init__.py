"""Input pipelines, one module per stage, in order: sources.py (datasets as random-access sources)
-> tokenizers.py (input.tokenizer) -> packing.py (input.pack) -> ops.py with image_ops.py and
text_ops.py (per-example ops) -> pipeline.py (grain: shard, shuffle, batch; the one place that calls
the stages). text.py is the vocabulary-training command line."""
from ftjax.data.pipeline import check_split, clear_eval_cache, eval_batches, local_batch_size, train_iterator
from ftjax.data.sources import get_source
from ftjax.data.tokenizers import check_vocab, tokenizer, tokenizer_path

__all__ = ['get_source', 'tokenizer', 'tokenizer_path', 'check_vocab', 'train_iterator', 'check_split',
           'clear_eval_cache', 'eval_batches', 'local_batch_size']
