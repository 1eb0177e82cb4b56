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
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...schema import TYPE_SEPARATOR

__all__ = ["Annotation", "Caption", "Mention", "caption_phrases", "parse_annotation", "parse_sentence",
           "parse_sentences", "read_image"]

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
