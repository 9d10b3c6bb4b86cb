"""Compositional shape scenes: 32x32 RGB renders of 1-4 filled, axis-aligned circles, squares and triangles in six
pure colours on black, and the analytic detector that reads a scene back from pixels.

A scene is a list of :class:`Obj`: a shape, a colour and a bounding box. Objects are 6-12 px across and their
boxes are at least one pixel apart, so each object is one connected region of one colour and the detector can
recover every scene it is given exactly (tests check this on thousands of random scenes). This is the ground
truth of the text-to-image judge: captions are written from scenes, and samples are judged by detecting theirs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maskdit.data.datasets import DATASETS, ImageDataset
from maskdit.data.video import SPLITS
from maskdit.errors import ConfigError
from maskdit.registry import Registry, one_of

SIZE = 32  #: the canvas side in pixels
MIN_SIDE, MAX_SIDE = 6, 12  #: an object's bounding box side in pixels
GAP = 1  #: the least number of empty pixels between two objects' boxes
MIN_AREA = 12  #: the detector ignores regions smaller than this (noise in a generated image)

#: Colour name -> RGB. Pure colours, far apart, so quantising a pixel to the nearest one is robust.
COLOURS: Registry[tuple[int, int, int]] = Registry("colour")
COLOURS.add("red", (255, 0, 0), "(255, 0, 0)")
COLOURS.add("green", (0, 255, 0), "(0, 255, 0)")
COLOURS.add("blue", (0, 0, 255), "(0, 0, 255)")
COLOURS.add("yellow", (255, 255, 0), "(255, 255, 0)")
COLOURS.add("magenta", (255, 0, 255), "(255, 0, 255)")
COLOURS.add("cyan", (0, 255, 255), "(0, 255, 255)")


def _circle(side: int) -> np.ndarray:
    centre = (side - 1) / 2
    y, x = np.mgrid[:side, :side]
    return (x - centre) ** 2 + (y - centre) ** 2 <= (side / 2) ** 2


def _square(side: int) -> np.ndarray:
    return np.ones((side, side), dtype=bool)


def _triangle(side: int) -> np.ndarray:
    """Pointing up: the apex row centred at the top, the base the whole bottom row."""
    centre = (side - 1) / 2
    y, x = np.mgrid[:side, :side]
    return np.abs(x - centre) <= (y + 1) / side * side / 2


#: Shape name -> ``fn(side) -> (side, side)`` bool mask of the filled shape in its box.
SHAPES: Registry[Callable[[int], np.ndarray]] = Registry("shape")
SHAPES.add("circle", _circle, "a disc filling its box")
SHAPES.add("square", _square, "the whole box")
SHAPES.add("triangle", _triangle, "pointing up, its base the box's bottom row")


@dataclass(frozen=True)
class Obj:
    """One object: its shape, colour and bounding box (``x``, ``y`` of the top-left pixel; ``side`` pixels)."""

    shape: str
    colour: str
    x: int
    y: int
    side: int

    @property
    def centre(self) -> tuple[float, float]:
        """The centroid of the box, ``(x, y)`` in pixels (what position captions compare)."""
        return self.x + (self.side - 1) / 2, self.y + (self.side - 1) / 2

    def to_json(self) -> dict[str, object]:
        return {"shape": self.shape, "colour": self.colour, "box": [self.x, self.y, self.side, self.side]}


def render(scene: list[Obj]) -> np.ndarray:
    """The scene as a ``(32, 32, 3)`` uint8 image on black."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    for obj in scene:
        mask = SHAPES[obj.shape](obj.side)
        region = image[obj.y : obj.y + obj.side, obj.x : obj.x + obj.side]
        region[mask] = COLOURS[obj.colour]
    return image


def _apart(a: Obj, b: Obj) -> bool:
    """Whether the boxes of ``a`` and ``b`` are at least :data:`GAP` pixels apart along some axis."""
    return (a.x + a.side + GAP <= b.x or b.x + b.side + GAP <= a.x
            or a.y + a.side + GAP <= b.y or b.y + b.side + GAP <= a.y)


def place(rng: np.random.Generator, objects: list[tuple[str, str]], tries: int = 200) -> list[Obj] | None:
    """Random non-touching boxes for ``objects`` (``(shape, colour)`` pairs), or ``None`` when ``tries``
    random layouts all collided (the caller draws again)."""
    for _ in range(tries):
        scene: list[Obj] = []
        for shape, colour in objects:
            side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
            x, y = (int(v) for v in rng.integers(0, SIZE - side + 1, size=2))
            obj = Obj(shape, colour, x, y, side)
            if not all(_apart(obj, other) for other in scene):
                break
            scene.append(obj)
        else:
            return scene
    return None


def detect(image: np.ndarray) -> list[Obj]:
    """The objects in a ``(32, 32, 3)`` image: each pixel is quantised to black or the nearest colour, each
    4-connected region of one colour of at least :data:`MIN_AREA` pixels is an object (:func:`classify` names its
    shape). Objects are listed top to bottom, then left to right."""
    from scipy import ndimage

    palette = np.array([(0, 0, 0), *(COLOURS[name] for name in COLOURS)], dtype=np.float32)
    pixels = np.asarray(image, dtype=np.float32).reshape(-1, 1, 3)
    nearest = ((pixels - palette[None]) ** 2).sum(-1).argmin(-1).reshape(image.shape[:2])
    found = []
    for index, colour in enumerate(COLOURS, start=1):
        labels, _ = ndimage.label(nearest == index)
        for label, region in enumerate(ndimage.find_objects(labels), start=1):
            ys, xs = region
            height, width = ys.stop - ys.start, xs.stop - xs.start
            mask = labels[region] == label
            if mask.sum() < MIN_AREA:
                continue
            found.append(Obj(classify(mask), colour, xs.start, ys.start, max(height, width)))
    return sorted(found, key=lambda o: (o.y, o.x))


def classify(mask: np.ndarray) -> str:
    """The shape of one region, a bool mask cropped to its bounding box: by its corners (a square fills all four,
    a triangle the two at its base, a circle none) and, where they disagree, by how much of the box it fills
    (square 1, circle 0.76-0.89, triangle 0.58-0.67 at 6-12 px)."""
    top = int(mask[0, 0]) + int(mask[0, -1])
    bottom = int(mask[-1, 0]) + int(mask[-1, -1])
    fill = float(mask.mean())
    if top == bottom == 2 and fill > 0.945:
        return "square"
    if top == 0 and bottom == 2 and fill < 0.71:
        return "triangle"
    if top == bottom == 0 and fill > 0.71:
        return "circle"
    return "square" if fill > 0.945 else "circle" if fill > 0.71 else "triangle"


# -- captions -----------------------------------------------------------------------------------------------------
#: Caption kinds, GenEval's categories. Every caption names every object's colour and shape; a kind says what a
#: scene of it holds and what the judge checks (GenEval's rule for that category).
KINDS: Registry[int] = Registry("caption kind")
KINDS.add("single", 1, "one object, 'a red circle'; judged: that shape is there")
KINDS.add("two", 2, "two objects, 'a red circle and a blue square'; judged: both shapes are there")
KINDS.add("counting", 0, "2-4 alike, 'three green triangles'; judged: exactly that many of that shape")
KINDS.add("colour", 1, "one object, 'a red circle'; judged: that shape is there in that colour")
KINDS.add("position", 2, "'a red circle to the left of a blue square'; judged: both there, placed so (centroids)")
KINDS.add("colour_attr", 2, "'a red circle and a blue square'; judged: both shapes there, each in its colour")

#: Relation -> ``(axis, sign)``: A is RELATION B when ``sign * (B - A)`` along ``axis`` (0: x, 1: y) exceeds
#: :data:`MARGIN` pixels between the centroids.
RELATIONS: Registry[tuple[int, int]] = Registry("relation")
RELATIONS.add("to the left of", (0, 1), "A's centroid at least MARGIN px left of B's")
RELATIONS.add("to the right of", (0, -1), "A's centroid at least MARGIN px right of B's")
RELATIONS.add("above", (1, 1), "A's centroid at least MARGIN px above B's")
RELATIONS.add("below", (1, -1), "A's centroid at least MARGIN px below B's")
MARGIN = 3.0
NUMBERS = {2: "two", 3: "three", 4: "four"}

#: Colour-shape pairs that the training split shows only alone (single and colour captions); the test split's
#: multi-object captions all hold at least one, so they are compositions never seen in training.
HELD_OUT = (("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "triangle"),
            ("magenta", "circle"), ("cyan", "square"))


def relation_holds(a: Obj, b: Obj, relation: str) -> bool:
    """Whether ``a`` is ``relation`` ``b``, by their centroids and :data:`MARGIN`."""
    axis, sign = RELATIONS[relation]
    return sign * (b.centre[axis] - a.centre[axis]) > MARGIN


def caption(kind: str, scene: list[Obj], relation: str | None = None) -> str:
    """The caption of a scene of ``kind`` (its objects in caption order)."""
    names = [f"{o.colour} {o.shape}" for o in scene]
    if kind == "counting":
        return f"{NUMBERS[len(scene)]} {scene[0].colour} {scene[0].shape}s"
    if kind == "position":
        return f"a {names[0]} {relation} a {names[1]}"
    return " and ".join(f"a {n}" for n in names)


def vocabulary() -> list[str]:
    """Every word a caption can hold (what a text model trained on any number of scenes must know)."""
    words = {"a", "and", *COLOURS, *SHAPES, *(f"{shape}s" for shape in SHAPES), *NUMBERS.values()}
    return sorted(words | {w for relation in RELATIONS for w in relation.split()})


def _pairs() -> list[tuple[str, str]]:
    return [(colour, shape) for colour in COLOURS for shape in SHAPES]


def _objects(rng: np.random.Generator, kind: str, split: str) -> list[tuple[str, str]]:
    """The ``(shape, colour)`` objects of one example: held-out pairs appear alone in training, and every
    multi-object example of the test split holds at least one of them."""
    held = list(HELD_OUT)
    seen = [p for p in _pairs() if p not in HELD_OUT]

    def pick(pool: list[tuple[str, str]]) -> tuple[str, str]:
        return pool[int(rng.integers(len(pool)))]

    if KINDS[kind] == 1:
        colour, shape = pick(held if split == "test" else _pairs())
        return [(shape, colour)]
    if kind == "counting":
        colour, shape = pick(held if split == "test" else seen)
        return [(shape, colour)] * int(rng.integers(2, 5))
    first = pick(held if split == "test" else seen)
    second = pick([p for p in (_pairs() if split == "test" else seen) if p[1] != first[1]])
    pair = [first, second] if rng.random() < 0.5 else [second, first]
    return [(shape, colour) for colour, shape in pair]


def example(rng: np.random.Generator, kind: str, split: str) -> tuple[list[Obj], str]:
    """One scene of ``kind`` for ``split`` and its caption."""
    while True:
        objects = _objects(rng, kind, split)
        relation = list(RELATIONS)[int(rng.integers(len(RELATIONS)))] if kind == "position" else None
        scene = place(rng, objects)
        if scene is not None and (relation is None or relation_holds(scene[0], scene[1], relation)):
            return scene, caption(kind, scene, relation)


def shapes_dataset(num: int, split: str = "train", seed: int = 0) -> dict[str, np.ndarray]:
    """``num`` captioned scenes, the kinds in turn: ``images`` uint8 ``(N, 32, 32, 3)``, ``captions``, ``kinds``
    and ``scenes`` (JSON per image: each object's shape, colour and box ``[x, y, w, h]``). ``split="test"`` holds
    compositions the training split never shows (:data:`HELD_OUT`); each split has its own random stream."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {one_of(SPLITS.names())}, got {split!r}")
    rng = np.random.default_rng([int(seed), SPLITS[split]])
    kinds = [list(KINDS)[i % len(KINDS)] for i in range(num)]
    examples = [example(rng, kind, split) for kind in kinds]
    return {
        "images": np.stack([render(scene) for scene, _ in examples]) if examples else np.zeros((0, SIZE, SIZE, 3),
                                                                                                 np.uint8),
        "captions": np.array([text for _, text in examples], dtype=str),
        "kinds": np.array(kinds, dtype=str),
        "scenes": np.array([json.dumps([o.to_json() for o in scene]) for scene, _ in examples], dtype=str),
    }


@DATASETS.register("shapes", "captioned compositional scenes (32x32 RGB shapes in GenEval's caption kinds); "
                   "data.num training scenes, the test split's compositions held out", needs_path=False, rank=2)
def _shapes(cfg: Any, split: str) -> ImageDataset:
    data = shapes_dataset(cfg.num, split, seed=0)
    images = torch.from_numpy(np.ascontiguousarray(data["images"].transpose(0, 3, 1, 2)))
    return ImageDataset(images, None, 0, "shapes" if split == "train" else f"shapes-{split}",
                        captions=[str(c) for c in data["captions"]], words=vocabulary())
