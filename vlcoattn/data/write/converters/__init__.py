"""Converters from real dataset layouts (and the synthetic generator) to shard directories, one module
per source family.

Each ``convert_*`` reads one public format, writes ``out_dir`` through a :class:`ShardSink`
(progress bar, ``dataset.json``) and returns the :class:`DatasetInfo`. Input records that cannot be
used (missing image file, box outside the image, empty text, ...) are skipped and counted in
``dataset.json["skipped"]``; an unreadable input file is a ``ValueError`` / ``FileNotFoundError``.
Images are copied byte for byte unless ``max_side`` asks for a downscale (then re-encoded, boxes
scaled); boxes always refer to the stored image after EXIF orientation.
"""

from .clevr_lite import write_synthetic
from .common import BOX_FORMATS, ImageStore, write_order, xywh_to_xyxy
from .flickr30k import convert_flickr30k
from .jsonl import convert_jsonl
from .refcoco import convert_refcoco, load_refs
from .text import (
    SPLIT_NAMES,
    TEXT_UNITS,
    convert_text,
    convert_text_split,
    convert_textcls,
    convert_textcls_split,
    stratified_split,
    text_records,
)
from .vqa2 import convert_vqa2

__all__ = [
    "BOX_FORMATS",
    "SPLIT_NAMES",
    "TEXT_UNITS",
    "ImageStore",
    "convert_flickr30k",
    "convert_jsonl",
    "convert_refcoco",
    "convert_text",
    "convert_text_split",
    "convert_textcls",
    "convert_textcls_split",
    "convert_vqa2",
    "load_refs",
    "stratified_split",
    "text_records",
    "write_order",
    "write_synthetic",
    "xywh_to_xyxy",
]
