"""A GenEval-style judge for the shapes captions: read what a caption asks for, detect what an image holds
(:func:`maskdit.data.shapes.detect`), and apply GenEval's rule for the caption's kind.

GenEval's rules, on shapes: ``single``, the named shape is there; ``two``, both named shapes are there;
``counting``, exactly that many of the named shape; ``colour``, the named shape is there in the named colour;
``position``, both are there and placed as said (centroids, with a margin); ``colour_attr``, both are there, each
in its own colour. The overall score is the mean of the kinds' scores, as GenEval reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskdit.data.shapes import KINDS, NUMBERS, RELATIONS, Obj, detect, relation_holds
from maskdit.errors import DataError

WORDS = {word: n for n, word in NUMBERS.items()}


@dataclass(frozen=True)
class Request:
    """What a caption asks for: ``(colour, shape)`` objects in caption order, a count and a relation."""

    objects: tuple[tuple[str, str], ...]
    count: int | None = None
    relation: str | None = None


def parse(caption: str) -> Request:
    """The request of a shapes caption ("a red circle", "three green triangles", "a red circle and a blue
    square", "a red circle to the left of a blue square"); anything else is a :class:`DataError`."""
    words = caption.split()
    if words and words[0] in WORDS and len(words) == 3 and words[2].endswith("s"):
        return Request(((words[1], words[2][:-1]),), count=WORDS[words[0]])
    relation = next((r for r in RELATIONS if f" {r} " in caption), None)
    parts = caption.split(f" {relation} ") if relation else caption.split(" and ")
    objects = []
    for part in parts:
        article, *rest = part.split()
        if article != "a" or len(rest) != 2:
            raise DataError(f"caption {caption!r} is not a shapes caption (e.g. 'a red circle and a blue square')")
        objects.append((rest[0], rest[1]))
    return Request(tuple(objects), relation=relation)


def judge(kind: str, request: Request, found: list[Obj]) -> bool:
    """Whether the detected objects ``found`` satisfy ``request`` by GenEval's rule for ``kind``."""
    KINDS.entry(kind)  # refuses an unknown kind
    shapes = [o.shape for o in found]
    if kind == "counting":
        return shapes.count(request.objects[0][1]) == request.count
    if kind in ("single", "two"):
        return all(shape in shapes for _, shape in request.objects)
    if kind in ("colour", "colour_attr"):
        return all(any((o.colour, o.shape) == wanted for o in found) for wanted in request.objects)
    (_, first), (_, second) = request.objects
    return any(relation_holds(a, b, request.relation) for a in found if a.shape == first
               for b in found if b.shape == second and b is not a)


def score(images: np.ndarray, captions: list[str], kinds: list[str]) -> dict[str, float]:
    """The share of images that satisfy their caption, per kind present and ``overall`` (the mean of the kinds)."""
    hits: dict[str, list[bool]] = {}
    for image, caption, kind in zip(images, captions, kinds):
        hits.setdefault(str(kind), []).append(judge(str(kind), parse(str(caption)), detect(image)))
    result = {kind: float(np.mean(hits[kind])) for kind in KINDS if kind in hits}
    result["overall"] = float(np.mean(list(result.values()))) if result else float("nan")
    return result


def detector_accuracy(num: int = 1000, seed: int = 0) -> float:
    """The share of ``num`` real test-split renders whose every object the detector finds exactly (shape, colour
    and box): what the judge's scores rest on, printed beside them."""
    import json

    from maskdit.data.shapes import shapes_dataset

    data = shapes_dataset(num, "test", seed)
    exact = 0
    for image, scene in zip(data["images"], data["scenes"]):
        truth = sorted((o["box"][1], o["box"][0], o["shape"], o["colour"], o["box"][2]) for o in json.loads(scene))
        exact += truth == sorted((o.y, o.x, o.shape, o.colour, o.side) for o in detect(image))
    return exact / max(1, num)
