"""Flickr30k Entities: captions whose phrases are marked (``Sentences/<image id>.txt``) and the boxes of
their entities (``Annotations/<image id>.xml``), read into the sample schema's ``phrases``.

A sentence file holds an image's five captions, one a line, each phrase in brackets with its entity id
and coarse type(s)::

    [/EN#18/people A child] in [/EN#19/clothing a pink dress] is climbing up [/EN#20/other a set of stairs] .

The caption is the line's words joined by single spaces without the brackets, as the dataset's own
``flickr30k_entities_utils.get_sentence_data`` (and MDETR after it) reads it; a phrase's span is its
characters in that caption. An annotation file is PASCAL VOC-like: each ``<object>`` names one or more
entities (``<name>``) and has a ``<bndbox>`` or, for entities with no box, ``<nobndbox>`` / ``<scene>``
flags. An entity can have several boxes (a group of people), kept in the order of the file; entity
``0`` (type ``notvisual``) and the entities without a box get ``boxes: []``, which training and
Recall@1 skip. Boxes are the file's integer pixels ``[xmin, ymin, xmax, ymax]``, as MDETR evaluates them.

:func:`convert_flickr30k` (``make-shards flickr30k``) writes one ``phrase`` sample per caption of the
images a split file (``<root>/<split>.txt``, one image id a line) lists. A box of zero width or height
(the annotations have a few) is dropped and counted as ``zero_size_box``; a phrase left without a box
keeps ``boxes: []``.
"""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...schema import TYPE_SEPARATOR, DatasetInfo
from ..sink import ShardSink
from .common import (
    ImageStore,
    add_shard_command,
    progress_bar,
    report,
    sink_options,
    write_image_sample,
    write_order,
)

__all__ = ["Annotation", "Caption", "Mention", "caption_phrases", "convert_flickr30k", "parse_annotation",
           "parse_sentence", "parse_sentences", "read_image", "split_ids"]

_OPEN = "[/EN#"


@dataclass(frozen=True)
class Mention:
    """One bracketed phrase: its ``[start, end)`` characters in the caption, entity id and type(s)."""

    start: int
    end: int
    entity: str
    types: tuple[str, ...]


@dataclass(frozen=True)
class Caption:
    """A caption without its brackets and the phrases marked in it."""

    text: str
    mentions: tuple[Mention, ...]


@dataclass(frozen=True)
class Annotation:
    """An image's size and its entities' boxes; ``no_box`` / ``scene``: the entities flagged so."""

    width: int
    height: int
    boxes: dict[str, list[list[int]]]  # entity id -> its boxes, [xmin, ymin, xmax, ymax] pixels
    no_box: frozenset[str]
    scene: frozenset[str]


def _phrase_head(token: str, line: str) -> tuple[str, tuple[str, ...]]:
    """``[/EN#18/people`` -> ("18", ("people",)); ``[/EN#7/bodyparts/other`` has two types."""
    entity, *types = token[len(_OPEN):].split("/")
    if not entity or not types or not all(types):
        raise ValueError(f"bad phrase header {token!r} in {line!r} (expected [/EN#<id>/<type>[/<type>...])")
    return entity, tuple(types)


def parse_sentence(line: str) -> Caption:
    """One line of a sentence file -> its caption and the phrases' spans (ValueError when unbalanced)."""
    words: list[str] = []
    mentions: list[Mention] = []
    length = 0  # characters of " ".join(words)
    head: tuple[str, tuple[str, ...]] | None = None  # the open phrase
    start = 0
    for token in line.split():
        if head is None and token.startswith(_OPEN):
            head, start = _phrase_head(token, line), length + (1 if words else 0)
            continue
        closing = head is not None and token.endswith("]")
        word = token[:-1] if closing else token
        if word:
            length += (1 if words else 0) + len(word)
            words.append(word)
        if closing:
            if length <= start:
                raise ValueError(f"empty phrase {head[0]!r} in {line!r}")
            mentions.append(Mention(start, length, *head))
            head = None
    if head is not None:
        raise ValueError(f"phrase {head[0]!r} is never closed with ']' in {line!r}")
    return Caption(" ".join(words), tuple(mentions))


def parse_sentences(text: str) -> list[Caption]:
    """A sentence file's text -> its captions, in order (blank lines skipped)."""
    return [parse_sentence(line) for line in text.splitlines() if line.strip()]


def _int(element: ElementTree.Element, tag: str, where: str) -> int:
    found = element.find(tag)
    if found is None or found.text is None:
        raise ValueError(f"{where}: <{tag}> is missing")
    try:
        return int(found.text.strip())
    except ValueError:
        raise ValueError(f"{where}: <{tag}> is not an integer: {found.text!r}") from None


def parse_annotation(xml_text: str, where: str = "annotation") -> Annotation:
    """An annotation file's text -> the image size and each entity's boxes (``where`` names it in errors)."""
    try:
        root = ElementTree.fromstring(xml_text)
    except ElementTree.ParseError as e:
        raise ValueError(f"{where}: not valid XML: {e}") from e
    size = root.find("size")
    if size is None:
        raise ValueError(f"{where}: <size> is missing")
    boxes: dict[str, list[list[int]]] = {}
    flagged: dict[str, set[str]] = {"nobndbox": set(), "scene": set()}
    for k, obj in enumerate(root.iter("object")):
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        if not names:
            raise ValueError(f"{where}: <object> {k} has no <name>")
        box = obj.find("bndbox")
        if box is not None:
            coords = [_int(box, tag, f"{where} <object> {k}") for tag in ("xmin", "ymin", "xmax", "ymax")]
            for name in names:
                boxes.setdefault(name, []).append(coords)
            continue
        for flag, entities in flagged.items():
            if obj.find(flag) is not None and _int(obj, flag, f"{where} <object> {k}") > 0:
                entities.update(names)
    return Annotation(_int(size, "width", where), _int(size, "height", where), boxes,
                      frozenset(flagged["nobndbox"]), frozenset(flagged["scene"]))


def caption_phrases(caption: Caption, annotation: Annotation) -> list[dict[str, Any]]:
    """The caption's phrases in the sample schema: span, the entity's boxes ([] for an entity with no
    box: not visual, flagged ``nobndbox`` or ``scene``), ``type`` (several joined by "/") and ``id``."""
    return [
        {"span": [m.start, m.end], "boxes": [list(b) for b in annotation.boxes.get(m.entity, [])],
         "type": TYPE_SEPARATOR.join(m.types), "id": m.entity}
        for m in caption.mentions
    ]


def read_image(root: str | Path, image_id: str) -> tuple[Annotation, list[tuple[str, list[dict[str, Any]]]]]:
    """The annotation of image ``image_id`` under a Flickr30k Entities ``root`` (holding ``Sentences/``
    and ``Annotations/``) and its captions as (text, phrases) pairs."""
    root = Path(root)
    paths = {kind: root / kind / f"{image_id}.{ext}" for kind, ext in (("Sentences", "txt"), ("Annotations", "xml"))}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"Flickr30k Entities file {path} does not exist")
    annotation = parse_annotation(paths["Annotations"].read_text(encoding="utf-8"), str(paths["Annotations"]))
    captions = parse_sentences(paths["Sentences"].read_text(encoding="utf-8"))
    return annotation, [(c.text, caption_phrases(c, annotation)) for c in captions]


# ----------------------------------------------------------------------------- shards


def split_ids(root: str | Path, split: str) -> list[str]:
    """The image ids of ``<root>/<split>.txt`` (the dataset's ``train.txt``, ``val.txt``, ``test.txt``)."""
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"Flickr30k Entities split file {path} does not exist (--split names <root>/<split>.txt)")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def drop_zero_size_boxes(phrases: list[dict[str, Any]], sink: ShardSink, key: str) -> None:
    """Remove, in place, every phrase box of zero width or height (counted as ``zero_size_box``)."""
    for phrase in phrases:
        kept = [b for b in phrase["boxes"] if b[2] > b[0] and b[3] > b[1]]
        for box in (b for b in phrase["boxes"] if b not in kept):
            sink.skip("zero_size_box", f"{key}: phrase {phrase['id']} box {box} has no area")
        phrase["boxes"] = kept


def convert_flickr30k(
    root: str | Path,
    images: str | Path,
    out_dir: str | Path,
    *,
    split: str,
    max_side: int | None = None,
    shard_size: int = 10_000,
    overwrite: bool = False,
    progress: bool = True,
    shuffle: bool = True,
) -> DatasetInfo:
    """Flickr30k Entities (``root`` holding ``Sentences/``, ``Annotations/`` and ``<split>.txt``; the images
    ``<id>.jpg`` in ``images``) as ``phrase`` samples: one per caption, its phrases with their entities' boxes."""
    ids = split_ids(root, split)
    store = ImageStore(images, max_side)
    captions = write_order(
        [(image_id, k, text, phrases) for image_id in ids for k, (text, phrases) in enumerate(read_image(root, image_id)[1])],
        shuffle,
    )
    options = {"root": str(root), "split": split, "max_side": max_side}
    with ShardSink(out_dir, "flickr30k", shard_size=shard_size, overwrite=overwrite, options=options) as sink:
        for image_id, k, text, phrases in progress_bar(captions, f"flickr30k {split}", len(captions), progress):
            key = f"flickr30k-{image_id}-{k}"
            drop_zero_size_boxes(phrases, sink, key)
            record = {"task": "phrase", "text": text, "phrases": phrases,
                      "meta": {"image_id": image_id, "caption": k, "split": split}}
            write_image_sample(sink, store, key, f"{image_id}.jpg", record)
    return sink.info


def add_commands(sub: argparse._SubParsersAction) -> None:
    """``make-shards flickr30k``."""
    p = add_shard_command(sub, "flickr30k", "Flickr30k Entities captions and phrase boxes (phrase grounding)",
                          images=True)
    p.add_argument("--root", required=True, help="the annotations: Sentences/, Annotations/, train.txt, val.txt, test.txt")
    p.add_argument("--images", required=True, help="the flickr30k-images folder (<id>.jpg)")
    p.add_argument("--split", required=True, help="train, val or test: the image ids of <root>/<split>.txt")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    info = convert_flickr30k(args.root, args.images, args.out, split=args.split, max_side=args.max_side,
                             **sink_options(args))
    return report(args.out, info)
