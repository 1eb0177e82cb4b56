"""Flickr30k Entities parsers, on fixtures written in the dataset's own formats."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vlcoattn.data.schema import sample_problems
from vlcoattn.data.write.converters.flickr30k import (
    Mention,
    caption_phrases,
    parse_annotation,
    parse_sentence,
    parse_sentences,
    read_image,
)

ROOT = Path(__file__).parent / "fixtures" / "flickr30k"
IMAGE = "1000268201"


def _plain(line):
    """The caption as the dataset's get_sentence_data reads it: the words without the brackets."""
    return " ".join(re.sub(r"\[/EN#\S+ ", "", line).replace("]", "").split())


def test_a_sentence_becomes_its_caption_and_the_spans_of_its_phrases():
    line = ("[/EN#1/people A child] in [/EN#2/clothing a pink dress] is climbing up "
            "[/EN#3/other a set of stairs] in [/EN#8/scene an entry way] .")
    caption = parse_sentence(line)
    assert caption.text == "A child in a pink dress is climbing up a set of stairs in an entry way ."
    assert caption.mentions == (Mention(0, 7, "1", ("people",)), Mention(11, 23, "2", ("clothing",)),
                                Mention(39, 54, "3", ("other",)), Mention(58, 70, "8", ("scene",)))
    two = parse_sentence("holding [/EN#7/bodyparts/other her hand] over [/EN#0/notvisual it] .")
    assert two.text == "holding her hand over it ."
    assert two.mentions == (Mention(8, 16, "7", ("bodyparts", "other")), Mention(22, 24, "0", ("notvisual",)))
    assert parse_sentence("  [/EN#5/people Two   men ]  walk .").text == "Two men walk ."


def test_every_fixture_caption_reads_as_the_dataset_reads_it():
    lines = (ROOT / "Sentences" / f"{IMAGE}.txt").read_text().splitlines()
    captions = parse_sentences("\n".join(lines) + "\n\n")
    assert len(captions) == len(lines) == 5
    for line, caption in zip(lines, captions):
        assert caption.text == _plain(line)
        marked = re.findall(r"\[/EN#(\d+)/(\S+) ([^\]]+)\]", line)
        assert [(caption.text[m.start:m.end], m.entity, "/".join(m.types)) for m in caption.mentions] == [
            (words, entity, types) for entity, types, words in marked]


@pytest.mark.parametrize("line, words", [
    ("[/EN#3/other a dog", "never closed"),
    ("[/EN#3 a dog]", "bad phrase header"),
    ("[/EN#3/other ]", "empty phrase"),
])
def test_malformed_sentences_are_named(line, words):
    with pytest.raises(ValueError, match=words):
        parse_sentence(line)


def test_the_annotation_gives_each_entity_its_boxes():
    annotation = parse_annotation((ROOT / "Annotations" / f"{IMAGE}.xml").read_text())
    assert (annotation.width, annotation.height) == (375, 500)
    assert annotation.boxes == {
        "1": [[145, 210, 241, 392]], "4": [[145, 210, 241, 392]],  # one <object> naming two entities
        "2": [[150, 257, 236, 358]], "3": [[1, 340, 190, 500], [200, 380, 300, 470]],  # two boxes, in order
        "5": [[40, 20, 375, 360]], "7": [[201, 230, 226, 262]]}
    assert annotation.no_box == {"6"} and annotation.scene == {"8"}


@pytest.mark.parametrize("xml, words", [
    ("<annotation><object>", "not valid XML"),
    ("<annotation></annotation>", "<size> is missing"),
    ("<annotation><size><width>9</width></size></annotation>", "<height> is missing"),
    ("<annotation><size><width>9</width><height>x</height></size></annotation>", "<height> is not an integer"),
    ("<annotation><size><width>9</width><height>9</height></size><object><bndbox/></object></annotation>",
     "<object> 0 has no <name>"),
    ("<annotation><size><width>9</width><height>9</height></size><object><name>1</name><bndbox><xmin>1</xmin>"
     "</bndbox></object></annotation>", "<object> 0: <ymin> is missing"),
])
def test_malformed_annotations_are_named(xml, words):
    with pytest.raises(ValueError, match=words):
        parse_annotation(xml, "a.xml")


def test_an_image_gives_captions_with_schema_phrases():
    annotation, captions = read_image(ROOT, IMAGE)
    assert [len(phrases) for _, phrases in captions] == [4, 3, 3, 2, 4]
    text, phrases = captions[4]
    assert text == "A girl going into a wooden building , holding her hand over it ."
    assert phrases == [
        {"span": [0, 6], "boxes": [[145, 210, 241, 392]], "type": "people", "id": "4"},
        {"span": [18, 35], "boxes": [[40, 20, 375, 360]], "type": "other", "id": "5"},
        {"span": [46, 54], "boxes": [[201, 230, 226, 262]], "type": "bodyparts/other", "id": "7"},
        {"span": [60, 62], "boxes": [], "type": "notvisual", "id": "0"}]
    assert [p["boxes"] for p in captions[0][1]][3] == [] and [p["boxes"] for p in captions[2][1]][2] == []  # scene, nobndbox
    for text, phrases in captions:
        record = {"task": "ground", "text": text, "boxes": [[0, 0, 1, 1]], "phrases": phrases}
        assert sample_problems(record, image_size=(annotation.width, annotation.height)) == []
    assert caption_phrases(parse_sentence("a cat"), annotation) == []
    with pytest.raises(FileNotFoundError, match=r"999\.txt"):
        read_image(ROOT, "999")
