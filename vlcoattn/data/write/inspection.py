"""Look inside shards before training on them: what they hold, what the loader would reject, and why.

:func:`inspect_shards` reads every sample of a source once through the loader's own
:class:`~vlcoattn.data.SampleDecoder` (schema, image decoding, boxes), so a sample it calls bad is
one training would skip, for the same reason. ``vlcoattn-make-shards inspect`` prints its report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..answers import build_vocab
from ..image import DEFAULT_MAX_PIXELS
from ..read.loader import read_shard
from ..read.pipeline import SampleDecoder
from ..read.shards import SCANNED, resolve_shards
from ..read.transforms import ImageTransform
from ..schema import DatasetInfo, SampleError, phrase_types, trained_answers

__all__ = ["ShardInspection", "inspect_shards"]

EXAMPLES_PER_REASON = 5


@dataclass
class ShardInspection:
    """What :func:`inspect_shards` found in one source."""

    source: str
    info: DatasetInfo | None  # the source's dataset.json, if it has one
    shards: int = 0
    samples: int = 0  # read
    tasks: Counter[str] = field(default_factory=Counter)  # usable samples per task
    answers: Counter[str] = field(default_factory=Counter)  # annotator answers of usable VQA samples
    labels: Counter[str] = field(default_factory=Counter)
    phrases: Counter[str] = field(default_factory=Counter)  # "samples" with phrases, "phrases", "without_box"
    phrase_types: Counter[str] = field(default_factory=Counter)  # phrases per type (a multi-type one in each)
    bad: Counter[str] = field(default_factory=Counter)  # reason -> samples
    bad_examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> "key: message", a few
    previews: list[dict[str, Any]] = field(default_factory=list)  # the first usable samples, to look at

    @property
    def usable(self) -> int:
        return self.samples - sum(self.bad.values())

    def answer_vocab(self, min_count: int = 1) -> list[str]:
        """The answers by decreasing count, those given at least ``min_count`` times."""
        return build_vocab(self.answers, min_count)

    def report(self, top: int = 10) -> str:
        """A few lines for a person: counts, the bad samples by reason with examples, vocabularies."""
        declared = f"dataset.json: {self.info.source}, {self.info.num_samples} samples" if self.info \
            else "no dataset.json"
        lines = [f"{self.source} ({declared}; {self.shards} shard(s))",
                 f"samples: {self.samples} read, {self.usable} usable, {sum(self.bad.values())} bad"]
        if self.info and self.info.num_samples != self.samples:
            lines.append(f"  WARNING: dataset.json says {self.info.num_samples} samples, the shards hold {self.samples}")
        lines.append("tasks: " + (", ".join(f"{t} {n}" for t, n in sorted(self.tasks.items())) or "none"))
        for reason, n in self.bad.most_common():
            lines.append(f"bad ({reason}): {n}")
            lines += [f"  {example}" for example in self.bad_examples[reason]]
        if self.answers:
            common = ", ".join(f"{a} {n}" for a, n in self.answers.most_common(top))
            lines.append(f"answers: {len(self.answers)} distinct; most given: {common}")
        if self.labels:
            lines.append("labels: " + ", ".join(f"{label} {n}" for label, n in sorted(self.labels.items())))
        return "\n".join(lines + self._phrase_lines(top))

    def _phrase_lines(self, top: int) -> list[str]:
        """The phrase counts and types, then each preview's phrases: its words and how many boxes."""
        if not self.phrases:
            return []
        p = self.phrases
        lines = [f"phrases: {p['phrases']} in {p['samples']} samples ({p['without_box']} without a box)"]
        if self.phrase_types:
            lines.append("phrase types: " + ", ".join(f"{t} {n}" for t, n in self.phrase_types.most_common(top)))
        for preview in (pv for pv in self.previews if pv.get("phrases")):
            listed = "; ".join(f"[{ph['text']}] {len(ph['boxes'])} box(es)" for ph in preview["phrases"])
            lines.append(f"  {preview['key']}: {preview['text']!r}: {listed}")
        return lines


def inspect_shards(
    source: str,
    *,
    show: int = 0,
    image_size: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> ShardInspection:
    """Read every sample of ``source`` (a shard dir, dataset.json or URL pattern) once; count tasks,
    answers and labels of the usable ones and the bad ones by reason, and keep the first ``show``
    usable samples letterboxed at ``image_size`` (``key``, ``image``, ``text``, ``task``, ``true_box`` in its
    pixels, ``answers``, ``label``, ``phrases``: words and boxes in its pixels) to look at."""
    shards, infos = resolve_shards(source)
    declared = [info for info in infos if info.source != SCANNED]
    result = ShardInspection(str(source), declared[0] if len(declared) == 1 else None, shards=len(shards))
    decoder = SampleDecoder(ImageTransform((image_size, image_size), (255, 255, 255)), max_pixels)
    bar = tqdm(total=sum(s.samples for s in shards), desc="inspect", unit="sample", disable=not progress)
    for shard in shards:
        for raw in read_shard(shard.url, 0, shard.samples):
            result.samples += 1
            bar.update()
            try:
                if "__error__" in raw:
                    raise SampleError("unreadable_shard", raw["__error__"])
                sample = decoder(raw)
            except SampleError as e:
                result.bad[e.reason] += 1
                examples = result.bad_examples.setdefault(e.reason, [])
                if len(examples) < EXAMPLES_PER_REASON:
                    examples.append(f"{raw.get('__key__', '?')}: {e}")
                continue
            result.tasks[sample["task"]] += 1
            if trained_answers(sample):
                result.answers.update(sample["answers"])
            if "label" in sample:
                result.labels[sample["label"]] += 1
            _count_phrases(result, sample.get("phrases", ()))
            if len(result.previews) < show:
                result.previews.append(_preview(sample, image_size))
    bar.close()
    return result


def _count_phrases(result: ShardInspection, phrases: Any) -> None:
    if not phrases:
        return
    result.phrases.update(samples=1, phrases=len(phrases), without_box=sum(len(p["boxes"]) == 0 for p in phrases))
    result.phrase_types.update(t for p in phrases for t in phrase_types(p))


def _xyxy(box: Any, size: int) -> list[float]:
    """Normalized cxcywh -> xyxy pixels of the ``size`` x ``size`` preview canvas."""
    cx, cy, w, h = (float(v) * size for v in box)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _preview(sample: dict[str, Any], size: int) -> dict[str, Any]:
    preview = {"key": sample["key"], "text": sample["text"], "task": sample["task"]}
    if "pixels" in sample:
        preview["image"] = sample["pixels"].permute(1, 2, 0).numpy()
    if "box" in sample:
        preview["true_box"] = _xyxy(sample["box"], size)
    if sample.get("phrases"):  # each phrase's words and boxes, drawn in a colour of their own
        preview["phrases"] = [{"text": sample["text"][slice(*p["span"])], "boxes": [_xyxy(b, size) for b in p["boxes"]]}
                              for p in sample["phrases"]]
    if trained_answers(sample):
        preview["answers"] = sample["answers"]
    if "label" in sample:
        preview["label"] = sample["label"]
    return preview
