"""Data: readers, batching (bucketing sampler, padding collate, masks, packing), language-model
streams for truncated BPTT, sliding windows over series, and synthetic long-memory tasks.

No model code lives here; see docs/data.md for a runnable example of each piece.
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
from .readers import SeriesTable, read_conllu, read_csv_series, read_text
from .streams import BPTTWindow, BPTTWindows, batchify, batchify_documents
from .synthetic import adding_problem, copy_memory
from .windows import SlidingWindows

__all__ = [
    "BPTTWindow",
    "BPTTWindows",
    "BucketBatchSampler",
    "PackedBatch",
    "PadCollate",
    "PaddedBatch",
    "SeriesTable",
    "SlidingWindows",
    "adding_problem",
    "batchify",
    "batchify_documents",
    "copy_memory",
    "lengths_to_mask",
    "mask_to_lengths",
    "pack",
    "pad_collate",
    "padding_fraction",
    "read_conllu",
    "read_csv_series",
    "read_text",
    "unpack",
]
