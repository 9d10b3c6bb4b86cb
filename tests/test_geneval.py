"""The GenEval-style judge: real renders pass every kind; each kind fails the image its rule rejects."""

import numpy as np
import pytest

from maskdit.data.shapes import Obj, render, shapes_dataset
from maskdit.errors import DataError
from maskdit.evaluate.geneval import Request, judge, parse, score


def test_captions_parse_back_to_what_they_ask_for():
    assert parse("a red circle") == Request((("red", "circle"),))
    assert parse("three green triangles") == Request((("green", "triangle"),), count=3)
    assert parse("a red circle and a blue square") == Request((("red", "circle"), ("blue", "square")))
    assert parse("a cyan square to the right of a yellow triangle") == Request(
        (("cyan", "square"), ("yellow", "triangle")), relation="to the right of")
    with pytest.raises(DataError, match="not a shapes caption"):
        parse("a photo of a dog")


@pytest.mark.parametrize("split", ["train", "test"])
def test_real_renders_score_one_on_every_kind(split):
    data = shapes_dataset(300, split, seed=11)
    result = score(data["images"], list(data["captions"]), list(data["kinds"]))
    assert result == {"single": 1.0, "two": 1.0, "counting": 1.0, "colour": 1.0, "position": 1.0,
                      "colour_attr": 1.0, "overall": 1.0}


def scene(*objects):
    return [Obj(*o) for o in objects]


@pytest.mark.parametrize("kind, caption, objects, ok", [
    ("single", "a red circle", [("circle", "blue", 2, 2, 8)], True),  # colour is not judged
    ("single", "a red circle", [("square", "red", 2, 2, 8)], False),
    ("colour", "a red circle", [("circle", "blue", 2, 2, 8)], False),
    ("colour", "a red circle", [("circle", "red", 2, 2, 8)], True),
    ("two", "a red circle and a blue square", [("circle", "red", 2, 2, 8)], False),
    ("colour_attr", "a red circle and a blue square", [("circle", "blue", 2, 2, 8), ("square", "red", 20, 2, 8)],
     False),  # the colours swapped: both shapes there, attributes wrong
    ("two", "a red circle and a blue square", [("circle", "blue", 2, 2, 8), ("square", "red", 20, 2, 8)], True),
    ("counting", "three green triangles", [("triangle", "green", x, 2, 7) for x in (0, 10, 20)], True),
    ("counting", "three green triangles", [("triangle", "green", x, 2, 7) for x in (0, 10)], False),
    ("counting", "two green triangles", [("triangle", "green", x, 2, 7) for x in (0, 10, 20)], False),
    ("position", "a red circle to the left of a blue square",
     [("circle", "red", 2, 2, 8), ("square", "blue", 20, 2, 8)], True),
    ("position", "a red circle to the right of a blue square",
     [("circle", "red", 2, 2, 8), ("square", "blue", 20, 2, 8)], False),
    ("position", "a red circle above a blue square", [("circle", "red", 2, 2, 8), ("square", "blue", 4, 2 + 9, 8)],
     True),
    ("position", "a red circle above a blue square", [("circle", "red", 2, 2, 8), ("square", "blue", 14, 3, 8)],
     False),  # side by side: within the margin vertically
])
def test_each_kind_applies_its_own_rule(kind, caption, objects, ok):
    image = render(scene(*objects))
    assert score(image[None], [caption], [kind])[kind] == (1.0 if ok else 0.0)
    from maskdit.data.shapes import detect

    assert judge(kind, parse(caption), detect(image)) is ok


def test_an_empty_image_fails_every_kind():
    blank = np.zeros((6, 32, 32, 3), np.uint8)
    captions = ["a red circle", "a red circle and a blue square", "two red circles", "a red circle",
                "a red circle above a blue square", "a red circle and a blue square"]
    kinds = ["single", "two", "counting", "colour", "position", "colour_attr"]
    assert score(blank, captions, kinds)["overall"] == 0.0


def test_the_detector_is_exact_on_real_renders_of_the_test_split():
    from maskdit.evaluate.geneval import detector_accuracy

    assert detector_accuracy(500, seed=4) == 1.0  # the issue asks for at least 0.99
