"""CLEVR-lite and its fine-detail sibling: rendered 2D scenes with questions and unique referring expressions.

A scene holds 2-6 non-overlapping objects (4 shapes x 8 colours x 2 sizes) on a plain light
background, drawn without anti-aliasing so every box is exact: it is the bounding box of the
object's drawn pixels. Each scene yields VQA samples (question types ``attribute``, ``count``,
``exists``, ``spatial``) and grounding samples whose expression picks out exactly one object
(types ``attribute``: "the large red square", ``relational``: "the square left of the red circle",
``superlative``: "the leftmost circle"). ``meta`` keeps the scene and a small program of every
question/expression, so answers and referents can be re-derived.

Everything is a pure function of (seed, split, scene index): the same call gives the same bytes.
A compositional hold-out (as CLEVR CoGenT) removes chosen (colour, shape) pairs from
train/val/test; the ``holdout`` split puts at least one of them in every scene.

A :class:`Family` is the vocabulary a scene is made of; the scenes, programs, questions and expressions
are shared. ``clevr-lite`` (above) tells objects apart by colour; ``glyphs`` draws tiles of one colour,
13-18 px at 128 px, that differ by the small mark inside them (:mod:`.glyphs`, ``SyntheticConfig.family``):
"the large plus square", "What mark is the small circle?", hold-out pairs (mark, shape).
"""

from __future__ import annotations

import functools
import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from PIL import Image, ImageDraw

from ..image import encode_image
from .glyphs import (
    GLYPH_HOLDOUT,
    GLYPH_SIZES,
    MARK_COLOR,
    MARKS,
    TILE_COLOR,
    TILE_SHAPES,
    draw_glyph,
    glyph_side,
)

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 30),
    "purple": (140, 60, 190),
    "cyan": (40, 200, 210),
    "orange": (245, 140, 30),
    "gray": (110, 110, 110),
}
SIZES = {"small": 0.12, "large": 0.2}  # object side as a fraction of the image side
BACKGROUNDS = ((238, 238, 238), (226, 224, 216), (214, 220, 228))
ATTRIBUTES = ("size", "color", "shape")
RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
SUPERLATIVES = {"left": "leftmost", "right": "rightmost", "above": "topmost", "below": "bottommost"}
QUESTION_TYPES = ("attribute", "count", "exists", "spatial")
SPLITS = ("train", "val", "test", "holdout")
MAX_OBJECTS = 6
ANSWERS = ("yes", "no", *(str(i) for i in range(MAX_OBJECTS + 1)), *SHAPES, *COLORS, *SIZES)

# CoGenT-like preset: squares never red/green/purple/cyan and triangles never blue/yellow/orange/gray
# in train/val/test (circles and diamonds take every colour).
COGENT_HOLDOUT = tuple(
    [(c, "square") for c in ("red", "green", "purple", "cyan")]
    + [(c, "triangle") for c in ("blue", "yellow", "orange", "gray")]
)

Box = tuple[int, int, int, int]
Description = dict[str, str]  # subset of a family's attributes, e.g. {"size", "color", "shape"}
ADJECTIVES = ("size", "color", "mark")  # the words before the noun (the shape), in this order


@dataclass(frozen=True)
class Family:
    """A scene family's vocabulary: sizes, identities and shapes; the hold-out pairs are (identity, shape)."""

    name: str  # also the namespace of the scene RNG
    identity: str  # the attribute that tells objects of one shape apart: "color", "mark"
    identities: tuple[str, ...]
    shapes: tuple[str, ...]
    sizes: dict[str, float]  # object side as a fraction of the image side
    cogent: tuple[tuple[str, str], ...]  # the CoGenT-like preset of hold-out pairs

    @property
    def values(self) -> dict[str, tuple[str, ...]]:
        """Each attribute's values, in description order: descriptions name attributes in this order."""
        return {"size": tuple(self.sizes), self.identity: self.identities, "shape": self.shapes}

    @property
    def attributes(self) -> tuple[str, ...]:
        return ("size", self.identity, "shape")

    @property
    def answers(self) -> tuple[str, ...]:
        """Every answer a question can have: the answer vocabulary written to ``dataset.json``."""
        numbers = tuple(str(i) for i in range(MAX_OBJECTS + 1))
        return ("yes", "no", *numbers, *self.shapes, *self.identities, *self.sizes)

    def side(self, size: str, image_size: int) -> int:
        """An object's side in pixels."""
        return max(6, round(self.sizes[size] * image_size))

    def allowed_pairs(self, holdout: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """(identity, shape) pairs outside ``holdout``, shape-major."""
        return [(i, s) for s in self.shapes for i in self.identities if (i, s) not in set(holdout)]


CLEVR_LITE = Family("clevr-lite", "color", tuple(COLORS), SHAPES, SIZES, COGENT_HOLDOUT)
GLYPHS = Family("glyphs", "mark", MARKS, TILE_SHAPES, GLYPH_SIZES, GLYPH_HOLDOUT)


class SceneObject(ABC):
    """What every scene object shares: the tight [x0, y0, x1, y1) ``box`` of its pixels, its family's
    attributes, and the drawing of itself in a cell."""

    family: ClassVar[Family]
    box: Box
    shape: str
    size: str

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    @property
    def pair(self) -> tuple[str, str]:
        """(identity, shape): what a hold-out pair names."""
        return getattr(self, self.family.identity), self.shape

    def matches(self, desc: Description) -> bool:
        return all(getattr(self, k) == v for k, v in desc.items())

    @abstractmethod
    def draw(self, draw: ImageDraw.ImageDraw, x: int, y: int, side: int) -> None:
        """Draw the object in the ``side`` x ``side`` cell at (x, y); its pixels fill its shape's box."""


@dataclass(frozen=True)
class ColorObject(SceneObject):
    """One drawn CLEVR-lite object: a ``shape`` filled with ``color``."""

    family: ClassVar[Family] = CLEVR_LITE
    shape: str
    color: str
    size: str
    box: Box

    def draw(self, draw: ImageDraw.ImageDraw, x: int, y: int, side: int) -> None:
        _draw_shape(draw, self.shape, x, y, side, COLORS[self.color])


@dataclass(frozen=True)
class GlyphObject(SceneObject):
    """One tile of the ``glyphs`` family: a dark ``shape`` with a light ``mark`` inside (:mod:`.glyphs`)."""

    family: ClassVar[Family] = GLYPHS
    shape: str
    mark: str
    size: str
    box: Box

    def draw(self, draw: ImageDraw.ImageDraw, x: int, y: int, side: int) -> None:
        _draw_shape(draw, self.shape, x, y, side, TILE_COLOR)
        g = glyph_side(side)
        draw_glyph(draw, self.mark, x + (side - g) // 2, y + (side - g) // 2, g, MARK_COLOR)


OBJECT_TYPES: dict[str, type[SceneObject]] = {cls.family.name: cls for cls in (ColorObject, GlyphObject)}
FAMILIES = {name: cls.family for name, cls in OBJECT_TYPES.items()}


def family_named(name: str) -> Family:
    """The family called ``name`` (``SyntheticConfig.family``)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown scene family {name!r}; choose from {list(FAMILIES)}")
    return FAMILIES[name]


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings; ``holdout`` lists (identity, shape) pairs kept out of train/val/test: (colour,
    shape) in ``clevr-lite``, (mark, shape) in ``glyphs``."""

    image_size: int = 128
    min_objects: int = 2
    max_objects: int = MAX_OBJECTS
    questions_per_scene: int = 3
    refs_per_scene: int = 2
    holdout: tuple[tuple[str, str], ...] = ()
    image_format: str = "png"
    duplicate_prob: float = 0.35  # chance an object copies an earlier one's identity+shape (needs relations)
    captions: bool = False  # also one caption per scene (task "phrase"): every object a phrase with its box
    family: str = "clevr-lite"  # the scenes' vocabulary: clevr-lite or glyphs (FAMILIES)

    def __post_init__(self) -> None:
        family = family_named(self.family)
        if not 2 <= self.min_objects <= self.max_objects <= MAX_OBJECTS:
            raise ValueError(f"need 2 <= min_objects <= max_objects <= {MAX_OBJECTS}")
        if self.image_size < 48:
            raise ValueError(f"image_size {self.image_size} too small: use >= 48 px")
        for identity, shape in self.holdout:
            if identity not in family.identities or shape not in family.shapes:
                raise ValueError(f"hold-out pair {identity}:{shape} is not a known {family.identity}:shape")
        if not family.allowed_pairs(self.holdout):
            raise ValueError(f"the hold-out cannot contain every {family.identity}:shape pair")


def parse_holdout(spec: str | None, family: str = "clevr-lite") -> tuple[tuple[str, str], ...]:
    """``"cogent"`` (the family's preset) or ``"red:circle,blue:square"`` -> (identity, shape) pairs:
    (colour, shape) in clevr-lite, (mark, shape) in glyphs (``"plus:circle"``)."""
    vocab = family_named(family)
    if not spec:
        return ()
    if spec.strip().lower() == "cogent":
        return vocab.cogent
    pairs = []
    for item in spec.split(","):
        identity, sep, shape = item.strip().partition(":")
        if not sep or identity not in vocab.identities or shape not in vocab.shapes:
            name = "colour" if vocab.identity == "color" else vocab.identity
            raise ValueError(
                f"bad hold-out pair {item!r}: use {name}:shape with {name}s {list(vocab.identities)} "
                f"and shapes {list(vocab.shapes)}, or 'cogent'"
            )
        pairs.append((identity, shape))
    return tuple(pairs)


# ---------------------------------------------------------------------------------------------- drawing


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, side: int, fill: Any) -> None:
    """Draw ``shape`` in the ``side`` x ``side`` cell at (x, y), without anti-aliasing."""
    e = side - 1
    if shape == "circle":
        draw.ellipse([x, y, x + e, y + e], fill=fill)
    elif shape == "square":
        draw.rectangle([x, y, x + e, y + e], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x + e / 2, y), (x + e, y + e), (x, y + e)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x + e / 2, y), (x + e, y + e / 2), (x + e / 2, y + e), (x, y + e / 2)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


@functools.lru_cache(maxsize=256)
def _pixel_box(shape: str, side: int) -> Box:
    """Tight box of the pixels ``_draw_shape`` sets in a cell at the origin (translation-invariant)."""
    mask = Image.new("1", (side, side), 0)
    _draw_shape(ImageDraw.Draw(mask), shape, 0, 0, side, 1)
    box = mask.getbbox()
    assert box is not None, (shape, side)
    return box


def render_scene(
    objects: Sequence[SceneObject], background: tuple[int, int, int], image_size: int
) -> Image.Image:
    """Draw the scene; each object's pixels fill exactly its ``box`` (checked by the tests)."""
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        side = obj.family.side(obj.size, image_size)
        dx, dy, _, _ = _pixel_box(obj.shape, side)
        obj.draw(draw, obj.box[0] - dx, obj.box[1] - dy, side)
    return image


# ---------------------------------------------------------------------------------------------- scenes


def generate_objects(rng: random.Random, config: SyntheticConfig, split: str) -> list[SceneObject]:
    """Sample attributes and non-overlapping positions (cells >= 3 px apart) for one scene."""
    family, make = family_named(config.family), OBJECT_TYPES[config.family]
    allowed = family.allowed_pairs(config.holdout)
    n = rng.randint(config.min_objects, config.max_objects)
    size_px = config.image_size
    while True:  # rejection sampling of a full placement; succeeds in a few tries at these densities
        pairs: list[tuple[str, str]] = []
        for i in range(n):
            if split == "holdout" and i == 0:
                pairs.append(rng.choice(config.holdout))
            elif pairs and rng.random() < config.duplicate_prob:
                pairs.append(rng.choice(pairs))
            else:
                pairs.append(rng.choice(allowed if split != "holdout" else allowed + list(config.holdout)))
        rng.shuffle(pairs)
        objects: list[SceneObject] = []
        cells: list[Box] = []
        for identity, shape in pairs:
            size = rng.choice(tuple(family.sizes))
            side = family.side(size, size_px)
            for _ in range(50):
                x, y = rng.randint(2, size_px - side - 2), rng.randint(2, size_px - side - 2)
                cell = (x, y, x + side, y + side)
                if all(_apart(cell, other, 3) for other in cells):
                    break
            else:
                break
            cells.append(cell)
            bx0, by0, bx1, by1 = _pixel_box(shape, side)
            box = (x + bx0, y + by0, x + bx1, y + by1)
            objects.append(make(shape=shape, size=size, box=box, **{family.identity: identity}))
        if len(objects) == n:
            return objects


def _apart(a: Box, b: Box, gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


# ---------------------------------------------------------------------------------------------- language


def describe(desc: Description, plural: bool = False) -> str:
    """{"size": "large", "color": "red"} -> "large red object" ("large red objects" when plural);
    {"mark": "plus", "shape": "circle"} -> "plus circle"."""
    words = [desc[k] for k in ADJECTIVES if k in desc]
    noun = desc.get("shape", "object")
    return " ".join([*words, noun + "s" if plural else noun])


Part = str | tuple[str, str]  # literal words, or (words, role) of a phrase that names objects
RoleSpan = tuple[int, int, str]  # [start, end) of a phrase in the rendered text, and its role


def render(parts: Sequence[Part]) -> tuple[str, list[RoleSpan]]:
    """Join ``parts`` into a text and the spans of its phrases: the one way every text is built, so each
    phrase's offsets are known exactly rather than searched for."""
    text, spans = "", []
    for part in parts:
        words = part if isinstance(part, str) else part[0]
        if not isinstance(part, str):
            spans.append((len(text), len(text) + len(words), part[1]))
        text += words
    return text, spans


def question_parts(kind: str, program: dict[str, Any]) -> list[Part]:
    """The words of a question of type ``kind`` asking ``program``; its phrases are ``target`` and ``anchor``."""
    target = describe(program["target"])
    if kind == "attribute":
        return ["What ", program["ask"], " is ", ("the " + target, "target"), "?"]
    if kind == "count":
        return ["How many ", (describe(program["target"], plural=True), "target"), " are there?"]
    if kind == "exists":
        return ["Is there ", ("a " + target, "target"), "?"]
    if kind == "spatial":
        rel = program["relation"]
        return ["Is ", ("the " + target, "target"), f" {RELATIONS[rel['dir']]} ",
                ("the " + describe(rel["anchor"]), "anchor"), "?"]
    raise ValueError(f"unknown question type {kind!r}")


def expression_parts(program: dict[str, Any]) -> list[Part]:
    """The words of a referring expression: "the <target>" (a superlative inside it), then "<relation>
    the <anchor>" for a relational one."""
    if program.get("superlative"):
        return [(f"the {SUPERLATIVES[program['superlative']]} {describe(program['target'])}", "target")]
    rel = program.get("relation")
    anchor = [f" {RELATIONS[rel['dir']]} ", ("the " + describe(rel["anchor"]), "anchor")] if rel else []
    return [("the " + describe(program["target"]), "target"), *anchor]


def program_phrases(
    objects: Sequence[SceneObject], program: dict[str, Any], spans: Sequence[RoleSpan], referent: int | None = None
) -> list[dict[str, Any]]:
    """The ``phrases`` of a text rendered from ``program`` (sample schema): the ``target`` phrase boxes
    ``referent`` (a referring expression's object) or, in a question, every object its description
    matches (none for "Is there a ...?" answered no); the ``anchor`` phrase boxes the anchor."""
    phrases = []
    for start, end, role in spans:
        if role == "anchor":
            named = _matching(objects, program["relation"]["anchor"])
        else:
            named = [referent] if referent is not None else _matching(objects, program["target"])
        phrases.append({"span": [start, end], "boxes": [list(objects[i].box) for i in named], "type": role})
    return phrases


def scene_caption(objects: Sequence[SceneObject], image_size: int) -> tuple[str, list[dict[str, Any]]]:
    """A caption naming every object once, left to right ("a small red square left of a large blue circle
    and a small green diamond"), and its ``phrases``: one per object, with its box and its index as ``id``.
    Consecutive objects are joined by "left of" where their centres lie a clear margin apart, else "and"."""
    order = sorted(range(len(objects)), key=lambda i: objects[i].center)
    parts: list[Part] = []
    for k, i in enumerate(order):
        if k:
            apart = relation_margin(objects[i], objects[order[k - 1]], "right") >= _margin(image_size)
            parts.append(" left of " if apart else " and ")
        obj = objects[i]
        parts.append(("a " + describe({k: getattr(obj, k) for k in obj.family.attributes}), str(i)))
    text, spans = render(parts)
    return text, [{"span": [a, b], "boxes": [list(objects[int(i)].box)], "id": i} for a, b, i in spans]


def _subsets(obj: SceneObject, exclude: str | None = None) -> list[Description]:
    """Descriptions of ``obj`` from fewest attributes to all, shape-bearing ones first."""
    keys = [k for k in obj.family.attributes if k != exclude]
    out = []
    for r in range(1, len(keys) + 1):
        combos = sorted(itertools.combinations(keys, r), key=lambda c: "shape" not in c)
        out += [{k: getattr(obj, k) for k in combo} for combo in combos]
    return out


def _matching(objects: Sequence[SceneObject], desc: Description) -> list[int]:
    return [i for i, o in enumerate(objects) if o.matches(desc)]


def _unique_description(
    objects: Sequence[SceneObject], i: int, exclude: str | None = None
) -> Description | None:
    """The shortest description that matches object ``i`` only (None if it has a twin)."""
    for desc in _subsets(objects[i], exclude):
        if _matching(objects, desc) == [i]:
            return desc
    return None


def _axis_value(obj: SceneObject, direction: str) -> float:
    """Coordinate that grows in ``direction`` (left: -x, right: x, above: -y, below: y)."""
    cx, cy = obj.center
    return {"left": -cx, "right": cx, "above": -cy, "below": cy}[direction]


def relation_margin(obj: SceneObject, anchor: SceneObject, direction: str) -> float:
    """How far (px, signed) ``obj``'s box centre lies ``direction`` of ``anchor``'s along the relation's axis."""
    return _axis_value(obj, direction) - _axis_value(anchor, direction)


def relation_holds(obj: SceneObject, anchor: SceneObject, direction: str) -> bool:
    """``obj`` is ``direction`` of ``anchor`` (by box centres)."""
    return relation_margin(obj, anchor, direction) > 0


def _clear_margin(
    objects: Sequence[SceneObject], indices: Sequence[int], anchor: SceneObject, direction: str, margin: float
) -> bool:
    """No object in ``indices`` sits within ``margin`` px of the anchor along the relation's axis."""
    return all(abs(relation_margin(objects[j], anchor, direction)) >= margin for j in indices)


def resolve_reference(objects: Sequence[SceneObject], program: dict[str, Any]) -> list[int]:
    """Indices of the objects a referring-expression program denotes (unique ones give one index)."""
    candidates = _matching(objects, program["target"])
    if program.get("relation"):
        anchors = _matching(objects, program["relation"]["anchor"])
        if len(anchors) != 1:
            return []
        anchor = objects[anchors[0]]
        candidates = [
            j
            for j in candidates
            if j != anchors[0] and relation_holds(objects[j], anchor, program["relation"]["dir"])
        ]
    if program.get("superlative") and candidates:
        best = max(candidates, key=lambda j: _axis_value(objects[j], program["superlative"]))
        candidates = [best]
    return candidates


def _margin(image_size: int) -> float:
    return 0.04 * image_size


def _relational_ref(
    objects: Sequence[SceneObject], t: int, rng: random.Random, margin: float
) -> tuple[str, dict] | None:
    """ "the <target> <relation> the <anchor>" picking out object ``t`` only."""
    options = []
    for a, anchor in enumerate(objects):
        anchor_desc = _unique_description(objects, a)
        if a == t or anchor_desc is None:
            continue
        for direction in RELATIONS:
            if not relation_holds(objects[t], anchor, direction):
                continue
            for target_desc in _subsets(objects[t]):
                program = {"target": target_desc, "relation": {"dir": direction, "anchor": anchor_desc}}
                others = [j for j in _matching(objects, target_desc) if j != a]
                if resolve_reference(objects, program) == [t] and _clear_margin(
                    objects, others, anchor, direction, margin
                ):
                    options.append(program)
                    break
    if not options:
        return None
    # prefer targets that are ambiguous on their own: there the relation does the work
    ambiguous = [p for p in options if len(_matching(objects, p["target"])) > 1]
    program = rng.choice(ambiguous or options)
    return render(expression_parts(program))[0], program


def _superlative_ref(
    objects: Sequence[SceneObject], t: int, rng: random.Random, margin: float
) -> tuple[str, dict] | None:
    """ "the leftmost <target>" where the target description matches >= 2 objects."""
    options = []
    for desc in _subsets(objects[t]):
        group = _matching(objects, desc)
        if len(group) < 2:
            continue
        for direction in SUPERLATIVES:
            values = sorted((_axis_value(objects[j], direction), j) for j in group)
            if values[-1][1] == t and values[-1][0] - values[-2][0] >= margin:
                options.append({"target": desc, "superlative": direction})
    if not options:
        return None
    program = rng.choice(options)
    return render(expression_parts(program))[0], program


def referring_expression(
    objects: Sequence[SceneObject], t: int, rng: random.Random, image_size: int
) -> tuple[str, str, dict] | None:
    """(ref_type, text, program) of an expression denoting object ``t`` only, or None."""
    margin = _margin(image_size)
    kinds = ["attribute", "relational", "superlative"]
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "attribute":
            desc = _unique_description(objects, t)
            found = (render(expression_parts({"target": desc}))[0], {"target": desc}) if desc else None
        elif kind == "relational":
            found = _relational_ref(objects, t, rng, margin)
        else:
            found = _superlative_ref(objects, t, rng, margin)
        if found:
            return kind, found[0], found[1]
    return None


def _random_description(rng: random.Random, family: Family) -> Description:
    keys = rng.sample(family.attributes, rng.randint(1, 2))
    return {k: rng.choice(family.values[k]) for k in sorted(keys, key=family.attributes.index)}


def _question(
    kind: str, objects: Sequence[SceneObject], rng: random.Random, image_size: int
) -> tuple[str, str, dict] | None:
    """(question, answer, program) of one type, or None when the scene does not allow it."""
    family = objects[0].family
    if kind == "attribute":
        t = rng.randrange(len(objects))
        asked = rng.choice(family.attributes)
        desc = _unique_description(objects, t, exclude=asked)
        if desc is None:
            return None
        program = {"target": desc, "ask": asked}
        return render(question_parts(kind, program))[0], getattr(objects[t], asked), program
    if kind == "count":
        desc = _random_description(rng, family) if rng.random() < 0.3 else rng.choice(_subsets(rng.choice(objects)))
        count = len(_matching(objects, desc))
        return render(question_parts(kind, {"target": desc}))[0], str(count), {"target": desc}
    if kind == "exists":
        want = rng.random() < 0.5
        for _ in range(20):
            desc = rng.choice(_subsets(rng.choice(objects))) if want else _random_description(rng, family)
            if bool(_matching(objects, desc)) == want:
                return render(question_parts(kind, {"target": desc}))[0], "yes" if want else "no", {"target": desc}
        return None
    if kind == "spatial":
        margin = _margin(image_size)
        pairs = [(a, b) for a in range(len(objects)) for b in range(len(objects)) if a != b]
        rng.shuffle(pairs)
        for a, b in pairs:
            da, db = _unique_description(objects, a), _unique_description(objects, b)
            direction = rng.choice(tuple(RELATIONS))
            if da is None or db is None or not _clear_margin(objects, [a], objects[b], direction, margin):
                continue
            answer = "yes" if relation_holds(objects[a], objects[b], direction) else "no"
            program = {"target": da, "relation": {"dir": direction, "anchor": db}}
            return render(question_parts(kind, program))[0], answer, program
        return None
    raise ValueError(f"unknown question type {kind!r}")


# ---------------------------------------------------------------------------------------------- samples


@dataclass
class Scene:
    """A generated scene and its samples (``records`` in the sample schema, without the image)."""

    split: str
    index: int
    background: tuple[int, int, int]
    objects: list[SceneObject]
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key suffix, record)


def scene_rng(seed: int, split: str, index: int, family: str = "clevr-lite") -> random.Random:
    """The RNG of one scene: scenes are independent of each other, of generation order and of family."""
    return random.Random(f"{family}:{seed}:{split}:{index}")


def generate_scene(seed: int, split: str, index: int, config: SyntheticConfig) -> Scene:
    """Objects, questions and referring expressions of scene ``index`` of ``split`` (and its caption, with
    ``config.captions``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    if split == "holdout" and not config.holdout:
        raise ValueError("the 'holdout' split needs hold-out pairs (config.holdout)")
    rng = scene_rng(seed, split, index, config.family)
    objects = generate_objects(rng, config, split)
    scene = Scene(split, index, rng.choice(BACKGROUNDS), objects)
    described = [{**asdict(o), "box": list(o.box)} for o in objects]  # JSON-native, as read back
    kinds = [QUESTION_TYPES[(index + j) % len(QUESTION_TYPES)] for j in range(config.questions_per_scene)]
    asked: set[str] = set()
    for j, kind in enumerate(kinds):
        for attempt_kind in [kind, *rng.sample(QUESTION_TYPES, len(QUESTION_TYPES))]:
            found = _question(attempt_kind, objects, rng, config.image_size)
            if found and found[0] not in asked:
                text, answer, program = found
                asked.add(text)
                meta = {"type": attempt_kind, "program": program, "objects": described}
                phrases = program_phrases(objects, program, render(question_parts(attempt_kind, program))[1])
                record = {"task": "vqa", "text": text, "answers": [answer], "phrases": phrases, "meta": meta}
                scene.records.append((f"q{j}", record))
                break
    targets = list(range(len(objects)))
    rng.shuffle(targets)
    if split == "holdout":  # refer to held-out objects first
        targets.sort(key=lambda i: objects[i].pair not in set(config.holdout))
    refs = 0
    for t in targets:
        if refs == config.refs_per_scene:
            break
        found = referring_expression(objects, t, rng, config.image_size)
        if found:
            ref_type, text, program = found
            meta = {"type": ref_type, "program": program, "object": t, "objects": described}
            phrases = program_phrases(objects, program, render(expression_parts(program))[1], referent=t)
            record = {"task": "ground", "text": text, "boxes": [list(objects[t].box)], "phrases": phrases,
                      "meta": meta}
            scene.records.append((f"r{refs}", record))
            refs += 1
    if config.captions:  # drawn last and with no random numbers: every other sample stays as it was
        text, phrases = scene_caption(objects, config.image_size)
        meta = {"type": "caption", "objects": described}
        scene.records.append(("c0", {"task": "phrase", "text": text, "phrases": phrases, "meta": meta}))
    return scene


def synthetic_samples(
    split: str, num_scenes: int, seed: int, config: SyntheticConfig
) -> Iterator[tuple[str, bytes, str, dict[str, Any]]]:
    """(key, image bytes, image suffix, record) for every sample of ``num_scenes`` scenes of ``split``."""
    for index in range(num_scenes):
        scene = generate_scene(seed, split, index, config)
        image = render_scene(scene.objects, scene.background, config.image_size)
        data = encode_image(image, config.image_format)
        ext = "jpg" if config.image_format.lower() in ("jpg", "jpeg") else "png"
        for suffix, record in scene.records:
            record["meta"].update(split=split, scene=index)
            yield f"{split}-{index:07d}-{suffix}", data, ext, record
