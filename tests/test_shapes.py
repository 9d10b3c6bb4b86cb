"""Shape scenes: renders follow the spec (sizes, colours, gaps) and the detector reads every scene back."""

import numpy as np
import pytest

from maskdit.data.shapes import COLOURS, GAP, MAX_SIDE, MIN_SIDE, SHAPES, SIZE, Obj, classify, detect, place, render


def random_scene(rng: np.random.Generator) -> list[Obj]:
    while True:
        count = int(rng.integers(1, 5))
        objects = [(str(rng.choice(list(SHAPES))), str(rng.choice(list(COLOURS)))) for _ in range(count)]
        scene = place(rng, objects)
        if scene is not None:
            return scene


def test_a_render_is_black_except_for_its_objects_in_their_pure_colours():
    scene = [Obj("square", "red", 2, 3, 6), Obj("circle", "cyan", 20, 20, 12)]
    image = render(scene)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    assert (image[3:9, 2:8] == (255, 0, 0)).all()  # a square fills its box
    assert (image[20:32, 20:32][image[20:32, 20:32].any(-1)] == (0, 255, 255)).all()
    assert not image[20, 20].any()  # a circle leaves its box's corners black
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert colours == {(0, 0, 0), (255, 0, 0), (0, 255, 255)}
    assert image[:, 10:18].sum() == 0  # nothing outside the boxes


@pytest.mark.parametrize("side", range(MIN_SIDE, MAX_SIDE + 1))
def test_each_shape_spans_its_whole_box_and_is_told_apart_at_every_size(side):
    for name in SHAPES:
        mask = SHAPES[name](side)
        assert mask.any(0).all() and mask.any(1).all()  # touches all four sides of its box: the box is exact
        assert classify(mask) == name


def test_placed_objects_fit_the_canvas_and_keep_a_gap():
    rng = np.random.default_rng(0)
    for _ in range(300):
        scene = random_scene(rng)
        for i, a in enumerate(scene):
            assert MIN_SIDE <= a.side <= MAX_SIDE and 0 <= a.x <= SIZE - a.side and 0 <= a.y <= SIZE - a.side
            for b in scene[i + 1:]:
                assert (a.x + a.side + GAP <= b.x or b.x + b.side + GAP <= a.x
                        or a.y + a.side + GAP <= b.y or b.y + b.side + GAP <= a.y)


def test_the_detector_reads_back_every_random_scene_exactly():
    rng = np.random.default_rng(1)
    scenes = [random_scene(rng) for _ in range(2000)]
    wrong = [s for s in scenes if detect(render(s)) != sorted(s, key=lambda o: (o.y, o.x))]
    assert wrong == []


def test_the_detector_tolerates_noise_and_ignores_specks():
    rng = np.random.default_rng(2)
    scene = [Obj("triangle", "yellow", 4, 4, 10), Obj("circle", "blue", 18, 16, 9)]
    image = render(scene).astype(np.int16) + rng.integers(-60, 61, size=(SIZE, SIZE, 3))
    image[30, 0] = (0, 255, 0)  # a one-pixel speck is not an object
    assert detect(np.clip(image, 0, 255).astype(np.uint8)) == scene
