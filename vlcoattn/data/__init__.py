"""Data: the shared sample format, its write side (``write/``: shard writer, converters, the CLEVR-lite
generator) and its read side (``read/``: a resumable streaming loader).

Typical use::

    from vlcoattn.data import LoaderConfig, build_loader
    processor = VLCoAttnProcessor.for_model(model, tokenizer)   # image preparation + tokenizer
    loader = build_loader("data/clevr/train", processor, LoaderConfig(batch_size=32, num_workers=2))
    for batch in loader:            # one epoch; len(loader) batches, the same on every rank
        ...
    ckpt["loader"] = loader.state_dict()      # later: loader.load_state_dict(ckpt["loader"])

Batch dict (B samples, T = longest tokenized text, A = answer vocabulary size):

==================  ===================  =========================================================
key                 type / shape         present
==================  ===================  =========================================================
``keys``            list[str]            always: the samples' ``__key__``
``tasks``           list[str]            always: "vqa" | "ground" | "cls" | "lm"
``texts``           list[str]            always (after augmentation's left/right swap)
``meta``            list[dict]           always: the samples' ``meta``
``sources``         list[int]            training loader: each row's source (index into ``sources``)
``input_ids``       long (B, T)          always, padded with the tokenizer's pad id
``attention_mask``  long (B, T)          always
``token_type_ids``  long (B, T)          always
``pixel_values``    float (B, 3, H, W)   if any sample has an image: letterboxed, (x/255 - mean) / std
``image_mask``      bool (B,)            with pixel_values: False rows are text-only (all zeros)
``letterbox``       float (B, 8)         with pixel_values: scale_x, scale_y, pad_x, pad_y, orig_w,
                                         orig_h, out_w, out_h (see ``read.transforms.invert_boxes``)
``boxes``           float (B, 4)         if any "ground" sample: first box, cxcywh in [0, 1] of the
                                         letterboxed image
``box_mask``        bool (B,)            with boxes: True for "ground" rows
``phrases``         list[list[dict]]     if any sample has phrases (any task): per row, each phrase's ``span``
                                         (start, end) in ``texts``, ``boxes`` (K, 4) cxcywh in [0, 1] of
                                         the letterboxed image, ``type`` / ``id`` if given
``answer_scores``   float (B, A)         if any "vqa" sample: official VQA accuracy of each answer
``answer_ids``      long (B,)            with answer_scores: majority answer index, -100 if none/OOV
``answers``         list[list[str]]      with answer_scores: all annotator answers (for the metric)
``labels``          long (B,) / (B, T)   "cls": label index (-100 elsewhere); "lm": input_ids with
                                         padding -100 (a batch never mixes cls and lm)
==================  ===================  =========================================================
"""

from .answers import answer_scores, build_vocab, majority_answer, normalize_answer
from .image import DEFAULT_MAX_PIXELS, ImageDecodeError, as_rgb_image, decode_image, encode_image, image_size
from .read.loader import BadDataError, EvalLoader, ShardLoader, build_eval_loader, build_loader
from .read.loader_config import LoaderConfig
from .read.pipeline import (
    IGNORE_INDEX,
    Collator,
    SampleDecoder,
    decoder_and_collator,
    image_transform,
    letterbox_image,
    normalize_pixels,
    tokenize,
)
from .read.shards import (
    ShardRef,
    answer_vocab_of,
    count_samples,
    read_answer_vocab,
    resolve_shards,
    scan_shard,
)
from .read.transforms import (
    ImageTransform,
    Letterbox,
    invert_boxes,
    letterbox,
    letterbox_params,
    swap_left_right,
)
from .schema import BAD_REASONS, TASKS, DatasetInfo, SampleError, check_record, sample_problems
from .write.converters import (
    convert_jsonl,
    convert_refcoco,
    convert_text,
    convert_text_split,
    convert_textcls,
    convert_textcls_split,
    convert_vqa2,
    load_refs,
    stratified_split,
    text_records,
    write_synthetic,
)
from .write.sink import ShardSink
from .write.synthetic import ANSWERS as SYNTHETIC_ANSWERS
from .write.synthetic import (
    COGENT_HOLDOUT,
    SyntheticConfig,
    generate_scene,
    parse_holdout,
    render_scene,
    resolve_reference,
    synthetic_samples,
)

__all__ = [
    "BAD_REASONS",
    "COGENT_HOLDOUT",
    "DEFAULT_MAX_PIXELS",
    "IGNORE_INDEX",
    "SYNTHETIC_ANSWERS",
    "TASKS",
    "BadDataError",
    "Collator",
    "DatasetInfo",
    "EvalLoader",
    "ImageDecodeError",
    "ImageTransform",
    "Letterbox",
    "LoaderConfig",
    "SampleDecoder",
    "SampleError",
    "ShardLoader",
    "ShardRef",
    "ShardSink",
    "SyntheticConfig",
    "answer_scores",
    "answer_vocab_of",
    "as_rgb_image",
    "build_eval_loader",
    "build_loader",
    "build_vocab",
    "check_record",
    "convert_jsonl",
    "convert_refcoco",
    "convert_text",
    "convert_text_split",
    "convert_textcls",
    "convert_textcls_split",
    "convert_vqa2",
    "count_samples",
    "decode_image",
    "decoder_and_collator",
    "encode_image",
    "generate_scene",
    "image_size",
    "image_transform",
    "invert_boxes",
    "letterbox",
    "letterbox_image",
    "letterbox_params",
    "load_refs",
    "majority_answer",
    "normalize_answer",
    "normalize_pixels",
    "parse_holdout",
    "read_answer_vocab",
    "render_scene",
    "resolve_reference",
    "resolve_shards",
    "sample_problems",
    "scan_shard",
    "stratified_split",
    "swap_left_right",
    "synthetic_samples",
    "text_records",
    "tokenize",
    "write_synthetic",
]
