"""Data: readers, batching (bucketing sampler, padding collate, masks, packing), language-model
streams for truncated BPTT, sliding windows over series, and synthetic long-memory tasks.

No model code lives here; see docs/data.md for a runnable example of each piece. Series in
long, M4 or single-column layout are read by :mod:`lstmkit.data.series_io` (it needs pandas,
so it is imported on its own).
"""

from .batching import (
    BucketBatchSampler,
    PackedBatch,
    PadCollate,
    PaddedBatch,
    lengths_to_mask,
    mask_to_lengths,
    pack,
    pad_collate,
    padding_fraction,
    unpack,
)
from .columns import read_columns, read_conllu_tags, read_tagged
from .readers import SeriesTable, read_conllu, read_csv_series, read_text
from .streams import BPTTWindow, BPTTWindows, batchify, batchify_documents
from .synthetic import adding_problem, copy_memory
from .tokenizers import (
    CharTokenizer,
    SubwordTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    train_tokenizer,
)
from .windows import SlidingWindows

__all__ = [
    "BPTTWindow",
    "BPTTWindows",
    "BucketBatchSampler",
    "CharTokenizer",
    "PackedBatch",
    "PadCollate",
    "PaddedBatch",
    "SeriesTable",
    "SlidingWindows",
    "SubwordTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "adding_problem",
    "batchify",
    "batchify_documents",
    "copy_memory",
    "lengths_to_mask",
    "load_tokenizer",
    "mask_to_lengths",
    "pack",
    "pad_collate",
    "padding_fraction",
    "read_columns",
    "read_conllu",
    "read_conllu_tags",
    "read_csv_series",
    "read_tagged",
    "read_text",
    "train_tokenizer",
    "unpack",
]
