"""Write a shard directory: :class:`ShardSink` checks each sample against the schema and writes it.

A shard directory is ``shard-000000.tar``, ``shard-000001.tar``, ... written by
``webdataset.ShardWriter`` plus a ``dataset.json`` (:class:`~vlcoattn.data.schema.DatasetInfo`)
that records every shard's sample count and vocabularies, so readers can plan an epoch without
opening the tars (:mod:`vlcoattn.data.read.shards` reads it).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import webdataset as wds

from ...utils.checks import check_positive
from ..answers import build_vocab
from ..schema import INFO_FILE, SHARD_PATTERN, DatasetInfo, SampleError, check_record, trained_answers

log = logging.getLogger(__name__)

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_key(key: str) -> str:
    """A webdataset key: no dots or slashes (they would split the sample), only [A-Za-z0-9_-]."""
    clean = _KEY_UNSAFE.sub("_", str(key)).strip("_")
    if not clean:
        raise ValueError(f"sample key {key!r} has no usable characters")
    return clean


class ShardSink:
    """Write schema-checked samples to ``out_dir/shard-%06d.tar``; :meth:`close` writes dataset.json.

    ``answer_vocab`` fixes the answer vocabulary; else it is built by frequency from the answers that
    ``count_answers(record)`` names (default: all of the record's answers), keeping those counted at least
    ``min_answer_count`` times. Answers outside it score 0 in training, as in VQA v2's soft scores.
    Records that cannot be converted are reported with :meth:`skip` and counted by reason. Used as
    a context manager it closes itself on success; the written :class:`DatasetInfo` is then ``.info``.
    """

    def __init__(
        self,
        out_dir: str | Path,
        source: str,
        *,
        shard_size: int = 10_000,
        max_shard_bytes: float = 1e9,
        overwrite: bool = False,
        options: dict[str, Any] | None = None,
        answer_vocab: Sequence[str] | None = None,
        count_answers: Callable[[dict[str, Any]], Iterable[str]] | None = None,
        min_answer_count: int = 1,
    ):
        self.out_dir = Path(out_dir)
        self.count_answers = count_answers or (lambda record: record.get("answers", ()))
        check_positive("min_answer_count", min_answer_count)
        self.min_answer_count = int(min_answer_count)
        self.source = source
        self.options = dict(options or {})
        self.fixed_answers = list(answer_vocab) if answer_vocab is not None else None
        self._prepare_dir(overwrite)
        self.shards: list[dict[str, Any]] = []
        self.tasks: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self._keys: set[str] = set()
        self.info: DatasetInfo | None = None
        self._writer = wds.ShardWriter(
            str(self.out_dir / SHARD_PATTERN),
            maxcount=shard_size,
            maxsize=max_shard_bytes,
            verbose=0,
            post=self._shard_done,
        )

    def _prepare_dir(self, overwrite: bool) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        old = sorted(self.out_dir.glob("shard-*.tar")) + sorted(self.out_dir.glob(INFO_FILE))
        if old and not overwrite:
            raise ValueError(
                f"{self.out_dir} already holds shards or {INFO_FILE}; pass --overwrite to replace them"
            )
        for path in old:
            path.unlink()

    def _shard_done(self, fname: str) -> None:
        self.shards.append({"file": Path(fname).name, "samples": self._writer.count})

    def write(
        self,
        key: str,
        record: dict[str, Any],
        image: bytes | None = None,
        image_ext: str = "jpg",
        image_size: tuple[int, int] | None = None,
    ) -> None:
        """Write one sample. Raises :class:`SampleError` for a record that breaks the schema (boxes are
        checked against ``image_size``, the stored image's (width, height), when given)."""
        key = sanitize_key(key)
        if key in self._keys:
            raise SampleError("bad_field", f"duplicate sample key {key!r}")
        record = check_record(record, has_image=image is not None, image_size=image_size)
        if self.fixed_answers is not None and not set(record.get("answers", ())) <= set(self.fixed_answers):
            raise ValueError(f"{key}: answers {record['answers']} outside the fixed answer vocabulary")
        sample = {"__key__": key, "json": json.dumps(record, ensure_ascii=False).encode("utf-8")}
        if image is not None:
            sample[image_ext] = image
        self._writer.write(sample)
        self._keys.add(key)
        self.tasks[record["task"]] += 1
        if trained_answers(record):
            self.answers.update(self.count_answers(record))
        if "label" in record:
            self.labels[record["label"]] += 1

    def add(
        self,
        key: str,
        record: dict[str, Any],
        image: bytes | None = None,
        image_ext: str = "jpg",
        image_size: tuple[int, int] | None = None,
    ) -> bool:
        """:meth:`write`, but a record that breaks the schema is skipped and counted instead."""
        try:
            self.write(key, record, image, image_ext, image_size)
        except SampleError as e:
            self.skip(e.reason, f"{key}: {e}")
            return False
        return True

    def skip(self, reason: str, message: str) -> None:
        """Count a skipped input record; the first few are logged in full."""
        self.skipped[reason] += 1
        if sum(self.skipped.values()) <= 10:
            log.warning("skipped (%s): %s", reason, message)

    def close(self) -> DatasetInfo:
        """Finish the last shard, drop an empty one, write and return dataset.json."""
        self._writer.close()
        for empty in [s for s in self.shards if s["samples"] == 0]:
            (self.out_dir / empty["file"]).unlink()
        self.shards = [s for s in self.shards if s["samples"] > 0]
        vocab = self.fixed_answers if self.fixed_answers is not None else build_vocab(self.answers, self.min_answer_count)
        info = DatasetInfo(
            source=self.source,
            num_samples=sum(s["samples"] for s in self.shards),
            shards=self.shards,
            tasks=dict(sorted(self.tasks.items())),
            answer_vocab=vocab,
            answer_counts=[self.answers[a] for a in vocab],
            label_vocab=sorted(self.labels),
            label_counts=[self.labels[label] for label in sorted(self.labels)],
            skipped=dict(sorted(self.skipped.items())),
            options=self.options,
        )
        (self.out_dir / INFO_FILE).write_text(info.to_json(), encoding="utf-8")
        self.info = info
        return info

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.close()
