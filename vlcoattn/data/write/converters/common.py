"""What the converters share: an image store with optional downscaling, box formats, the write order,
JSON reading, progress bars, and the options and report of their ``make-shards`` sub-commands."""

from __future__ import annotations

import argparse
import functools
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image
from tqdm import tqdm

from ...image import ImageDecodeError, decode_image, encode_image, image_format, image_size
from ...schema import INFO_FILE, DatasetInfo, SampleError, sample_problems
from ..sink import ShardSink

BOX_FORMATS = ("xyxy", "xywh")


class ImageStore:
    """Reads images below ``root`` once each (a small cache: VQA asks ~5 questions per image) and
    downscales them to ``max_side`` when asked."""

    def __init__(self, root: str | Path, max_side: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image directory {self.root} does not exist")
        if max_side is not None and max_side < 8:
            raise ValueError(f"--max-side must be >= 8, got {max_side}")
        self.max_side = max_side
        self.load = functools.lru_cache(maxsize=16)(self._load)

    def _load(self, relpath: str) -> tuple[bytes, str, tuple[int, int], float]:
        """(bytes, suffix, (width, height), scale applied to the original pixels)."""
        path = self.root / relpath
        if not path.is_file():
            raise SampleError("missing_image", f"image file {path} not found")
        data = path.read_bytes()
        try:
            size = image_size(data)
            if self.max_side is None or max(size) <= self.max_side:
                return data, image_format(data), size, 1.0
            image = decode_image(data)
            scale = self.max_side / max(image.size)
            new_size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            fmt = "PNG" if image_format(data) == "png" else "JPEG"
            resized = image.resize(new_size, Image.BICUBIC)
            return (
                encode_image(resized, fmt),
                fmt.lower().replace("jpeg", "jpg"),
                new_size,
                new_size[0] / size[0],
            )
        except ImageDecodeError as e:
            raise SampleError("bad_image", str(e)) from e


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """[x, y, w, h] (COCO) -> [x0, y0, x1, y1]."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        raise SampleError("bad_box", f"box must be 4 numbers, got {box!r}")
    x, y, w, h = box
    return [x, y, x + w, y + h]


def map_boxes(record: dict[str, Any], fn: Callable[[Any], list[float]]) -> None:
    """Replace every box of ``record`` by ``fn(box)``, in place: its ``boxes`` and each phrase's (where
    they are lists; a malformed record is left for the schema check to name)."""
    if isinstance(record.get("boxes"), list):
        record["boxes"] = [fn(box) for box in record["boxes"]]
    for phrase in record["phrases"] if isinstance(record.get("phrases"), list) else ():
        if isinstance(phrase, dict) and isinstance(phrase.get("boxes"), list):
            phrase["boxes"] = [fn(box) for box in phrase["boxes"]]


def write_image_sample(
    sink: ShardSink, store: ImageStore, key: str, relpath: str, record: dict[str, Any]
) -> None:
    """Load the image (maybe downscaled, boxes follow) and write the sample, or count it skipped."""
    try:
        data, ext, size, scale = store.load(relpath)
    except SampleError as e:
        sink.skip(e.reason, f"{key}: {e}")
        return
    if scale != 1.0 and not sample_problems(record):  # sink.add reports bad ones
        map_boxes(record, lambda box: [round(v * scale, 2) for v in box])
    sink.add(key, record, data, ext, size)


def check_split_dirs(out_dir: Path, splits: Iterable[str], overwrite: bool) -> None:
    """Refuse before writing anything when a split dir ``out_dir/<split>`` already holds shards
    (:class:`ShardSink`'s rule, checked for every split up front so that no split is half written)."""
    for split in splits:
        folder = out_dir / split
        if not overwrite and (any(folder.glob("shard-*.tar")) or (folder / INFO_FILE).exists()):
            raise ValueError(
                f"{folder} already holds shards or {INFO_FILE}; pass --overwrite to replace them"
            )


T = TypeVar("T")


def write_order(items: Iterable[T], shuffle: bool) -> list[T]:
    """The order samples are written in: a seeded shuffle by default, as shards are usually written.
    A label- or task-sorted source (many public CSVs are) would otherwise give single-class shards and,
    through a shuffle buffer smaller than a class, single-class batches that train a useless model.
    ``shuffle=False`` keeps the input order."""
    items = list(items)
    if shuffle:
        random.Random("write-order").shuffle(items)
    return items


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from e


def progress_bar(items: Iterable[Any], desc: str, total: int | None, progress: bool) -> Iterable[Any]:
    return tqdm(items, desc=desc, total=total, unit="rec", disable=not progress, dynamic_ncols=True)


def add_shard_command(
    sub: argparse._SubParsersAction, name: str, help: str, *, images: bool = False, shuffle: bool = True
) -> argparse.ArgumentParser:
    """The ``make-shards NAME`` sub-parser with the options every converter takes: the shard directory and
    size, overwrite, progress, and (``shuffle``) the write order, (``images``) the image downscale."""
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--out", required=True, help="output shard directory")
    p.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (default 10000)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if shuffle:
        p.add_argument("--no-shuffle", action="store_true",
                       help="write samples in the input order (default: a seeded shuffle, so sorted inputs "
                            "do not give single-class shards)")
    if images:
        p.add_argument(
            "--max-side",
            type=int,
            default=None,
            help="re-encode images whose longer side exceeds this (boxes follow); default: copy",
        )
    return p


def sink_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a ``convert_*`` call that :func:`add_shard_command`'s options set."""
    options = {"shard_size": args.shard_size, "overwrite": args.overwrite, "progress": not args.no_progress}
    if hasattr(args, "no_shuffle"):
        options["shuffle"] = not args.no_shuffle
    return options


def report(out: str, infos: DatasetInfo | dict[str, DatasetInfo]) -> int:
    """One stdout line per written directory (``out``, or ``out/<split>`` for each split); exit code 0."""
    by_dir = {out: infos} if isinstance(infos, DatasetInfo) else {f"{out}/{s}": i for s, i in infos.items()}
    for name, info in by_dir.items():
        skipped = ", ".join(f"{r}={n}" for r, n in info.skipped.items()) or "none"
        tasks = ", ".join(f"{t}={n}" for t, n in info.tasks.items()) or "none"
        print(f"{name}: {info.num_samples} samples in {len(info.shards)} shard(s) ({tasks}); skipped: {skipped}")
    return 0
