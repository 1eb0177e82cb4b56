"""Which objects a feature probe reads, and what each is called: boxes of shard samples, labelled by a source.

An attribute source (``--attribute``) says where an object's box and its label come from. The schema's
boxes are a sample's referents (a grounding sample's first box is its target); its labels are the text,
the answers and ``label``; what a dataset knows of each object beyond that lives, free-form, in ``meta``.
So a source either labels a sample's boxes, or names a list of objects in ``meta`` that carry their own box:

==========================  ===========================================================================
source                      objects, and the label of each
==========================  ===========================================================================
``text``                    each box of a sample; its text (an expression that names the object)
``answer``                  each box of a sample; its majority answer (VQA samples that carry boxes)
``label``                   each box of a sample; its ``label`` field
``meta.KEY[.KEY...]``       each box of a sample; the value at that meta path (RefCOCO: ``meta.category``)
``meta.LIST[].KEY[...]``    each element of the list at ``meta.LIST``, with its own ``box`` ([x0, y0, x1,
                            y1] pixels of the stored image); the value at ``KEY...`` inside it (CLEVR-lite:
                            ``meta.objects[].color``, every object of the scene, not only the referred one)
==========================  ===========================================================================

An object is identified by (image, box, label): the samples of one image that describe the same object
(CLEVR-lite writes the scene's objects into each of its questions) count it once. An image is identified
by the hash of its bytes, which is also what the held-out split goes by.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.answers import majority_answer
from ..data.image import IMAGE_EXTS
from ..data.read.loader import read_shard
from ..data.read.shards import resolve_shards
from ..data.schema import SampleError, check_record

__all__ = ["AttributeSource", "ProbeObjects", "collect_objects", "image_id", "read_samples"]

Box = tuple[float, float, float, float]
SAMPLE_FIELDS = ("text", "answer", "label")
_MISSING = object()


@dataclass(frozen=True)
class AttributeSource:
    """A parsed ``--attribute``: ``field`` is text / answer / label / meta; ``path`` the meta keys to the value
    (or to the object list when ``item_path`` is set); ``item_path`` the keys inside each listed object."""

    spec: str
    field: str
    path: tuple[str, ...] = ()
    item_path: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, spec: str) -> AttributeSource:
        """``text``, ``answer``, ``label``, ``meta.KEY...`` or ``meta.LIST[].KEY...`` (see the module doc)."""
        usage = (f"--attribute {spec!r}: use text, answer, label, meta.KEY (a value per sample, labelling its "
                 "boxes) or meta.LIST[].KEY (a meta list of objects, each with its own 'box')")
        if spec in SAMPLE_FIELDS:
            return cls(spec, spec)
        if not spec.startswith("meta.") or spec.count("[]") > 1:
            raise ValueError(usage)
        listed, sep, inside = spec[len("meta."):].partition("[]")
        if sep and not inside.startswith("."):
            raise ValueError(usage)
        path, item_path = tuple(listed.split(".")), tuple(inside[1:].split(".")) if sep else None
        if not all(path) or (item_path is not None and not all(item_path)):
            raise ValueError(usage)
        return cls(spec, "meta", path, item_path)

    def objects(self, record: Mapping[str, Any]) -> list[tuple[Box, str]]:
        """(box, label) of every object this source finds in one checked record; [] where it has none."""
        if self.item_path is not None:
            items = _lookup(record.get("meta", {}), self.path)
            if not isinstance(items, list):
                return []
            found = [(_item_box(self.spec, item, i), _label(self.spec, _lookup(item, self.item_path)))
                     for i, item in enumerate(items) if isinstance(item, Mapping)]
            return [(box, label) for box, label in found if label is not None]
        label = _label(self.spec, self._sample_value(record))
        boxes = record.get("boxes") or []
        return [] if label is None else [(tuple(float(v) for v in box), label) for box in boxes]

    def _sample_value(self, record: Mapping[str, Any]) -> Any:
        if self.field == "text":
            return record["text"].strip()
        if self.field == "answer":
            return majority_answer(record["answers"]) if record.get("answers") else None
        if self.field == "label":
            return record.get("label")
        return _lookup(record.get("meta", {}), self.path)


def _lookup(value: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _label(spec: str, value: Any) -> str | None:
    """A scalar as the class name; None where the sample has no such value."""
    if value is _MISSING or value is None:
        return None
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    raise ValueError(f"--attribute {spec!r}: the value there is a {type(value).__name__}, not a label: {value!r}")


def _item_box(spec: str, item: Mapping[str, Any], i: int) -> Box:
    box = item.get("box")
    ok = isinstance(box, (list, tuple)) and len(box) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    if not ok or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"--attribute {spec!r}: listed object #{i} has no valid 'box' [x0, y0, x1, y1]: {box!r}")
    return tuple(float(v) for v in box)


def image_id(data: bytes) -> str:
    """The identity of an image: the hash of its encoded bytes (duplicated images are one image)."""
    return hashlib.sha1(data).hexdigest()


@dataclass
class ProbeObjects:
    """What :func:`collect_objects` found: the images, and per attribute its objects as (image id, box in
    pixels of the stored image, label)."""

    images: dict[str, bytes] = field(default_factory=dict)
    objects: dict[str, list[tuple[str, Box, str]]] = field(default_factory=dict)
    samples: int = 0  # samples read
    meta_keys: Counter[str] = field(default_factory=Counter)  # top-level meta keys seen (for error messages)

    def check(self, what: str) -> None:
        """ValueError naming the attribute that found no object in ``what`` (and the meta keys there are)."""
        for attribute, found in self.objects.items():
            if not found:
                keys = ", ".join(k for k, _ in self.meta_keys.most_common(12)) or "none"
                raise ValueError(f"--attribute {attribute!r} found no object with a box in {what} "
                                 f"({self.samples} samples read; their meta keys: {keys})")


def collect_objects(samples: Iterable[tuple[bytes, Mapping[str, Any]]], attributes: Sequence[str]) -> ProbeObjects:
    """The objects each attribute source (see :class:`AttributeSource`) finds in (image bytes, record) pairs;
    an object that several samples of one image describe is kept once."""
    sources = [AttributeSource.parse(a) for a in attributes]
    if not sources or len(set(attributes)) != len(attributes):
        raise ValueError(f"--attribute: name one or more distinct label sources, got {list(attributes)}")
    found = ProbeObjects(objects={s.spec: [] for s in sources})
    seen: set[tuple[str, str, Box, str]] = set()
    for data, record in samples:
        found.samples += 1
        found.meta_keys.update(record.get("meta", {}).keys())
        key = image_id(data)
        for source in sources:
            for box, label in source.objects(record):
                if (source.spec, key, box, label) not in seen:
                    seen.add((source.spec, key, box, label))
                    found.objects[source.spec].append((key, box, label))
                    found.images.setdefault(key, data)
    return found


def read_samples(source: str, max_samples: int | None = None, bad: Counter[str] | None = None
                 ) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(image bytes, checked record) of the first ``max_samples`` samples of a shard source (dir, dataset.json
    or URL pattern) that have an image; the others are counted in ``bad`` by reason."""
    shards, _ = resolve_shards(source)
    bad = Counter() if bad is None else bad
    read = 0
    for shard in shards:
        for raw in read_shard(shard.url, 0, shard.samples):
            if max_samples is not None and read >= max_samples:
                return
            read += 1
            image = [raw[ext] for ext in IMAGE_EXTS if ext in raw]
            try:
                if "__error__" in raw:
                    raise SampleError("unreadable_shard", raw["__error__"])
                record = json.loads(raw["json"].decode("utf-8")) if "json" in raw else None
                record = check_record(record, has_image=bool(image))
            except (SampleError, UnicodeDecodeError, json.JSONDecodeError) as e:
                bad[getattr(e, "reason", "bad_json")] += 1
                continue
            if len(image) == 1:
                yield image[0], record
            else:
                bad["missing_image" if not image else "bad_field"] += 1
