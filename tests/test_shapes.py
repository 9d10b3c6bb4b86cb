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


def described(caption: str, scene: list[Obj], kind: str) -> bool:
    """Whether ``caption`` names exactly the scene's objects (their number, and for position a relation that
    holds, in caption order)."""
    from maskdit.data.shapes import relation_holds
    from maskdit.evaluate.geneval import parse

    request = parse(caption)
    if kind == "counting":
        return [(o.colour, o.shape) for o in scene] == list(request.objects) * request.count
    if kind == "position":
        first = [o for o in scene if (o.colour, o.shape) == request.objects[0]]
        second = [o for o in scene if (o.colour, o.shape) == request.objects[1]]
        return len(scene) == 2 and len(first) == len(second) == 1 and relation_holds(first[0], second[0],
                                                                                    request.relation)
    return sorted(request.objects) == sorted((o.colour, o.shape) for o in scene)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_caption_describes_what_the_detector_finds_in_its_image(split):
    from maskdit.data.shapes import KINDS, shapes_dataset

    data = shapes_dataset(600, split, seed=3)
    assert data["images"].shape == (600, SIZE, SIZE, 3) and data["images"].dtype == np.uint8
    assert sorted(set(data["kinds"])) == sorted(KINDS)
    for image, text, kind in zip(data["images"], data["captions"], data["kinds"]):
        assert described(str(text), detect(image), str(kind)), (text, kind)


def test_the_test_split_composes_pairs_that_training_shows_only_alone():
    import json

    from maskdit.data.shapes import HELD_OUT, shapes_dataset

    def pairs(data, multi):
        return [{(o["colour"], o["shape"]) for o in json.loads(s)} for s, k in zip(data["scenes"], data["kinds"])
                if (k not in ("single", "colour")) == multi]

    train, test = shapes_dataset(1200, "train", seed=0), shapes_dataset(600, "test", seed=0)
    held = set(HELD_OUT)
    assert all(not p & held for p in pairs(train, multi=True))  # never composed in training
    assert set().union(*pairs(train, multi=False)) >= held  # but each is seen alone
    assert all(p & held for p in pairs(test, multi=True))  # every test composition is new


def test_the_shapes_set_is_a_pure_function_of_split_and_seed():
    from maskdit.data.shapes import shapes_dataset

    a, b = shapes_dataset(50, "train", seed=7), shapes_dataset(50, "train", seed=7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["images"], shapes_dataset(50, "test", seed=7)["images"])
    assert not np.array_equal(a["images"], shapes_dataset(50, "train", seed=8)["images"])


def test_maskdit_data_shapes_writes_the_npz_the_spec_names(tmp_path, capsys):
    import json

    from maskdit.cli.app import main

    out = tmp_path / "shapes.npz"
    assert main(["data", "shapes", "--num", "12", "--split", "test", "--seed", "5", "--out", str(out)]) == 0
    assert "wrote 12 test shape scenes" in capsys.readouterr().out
    with np.load(out) as f:
        assert sorted(f.files) == ["captions", "images", "kinds", "scenes"]
        assert f["images"].shape == (12, SIZE, SIZE, 3) and f["images"].dtype == np.uint8
        scenes = [json.loads(s) for s in f["scenes"]]
        assert all(set(o) == {"shape", "colour", "box"} for scene in scenes for o in scene)
        from maskdit.data.shapes import shapes_dataset

        assert np.array_equal(f["images"], shapes_dataset(12, "test", 5)["images"])
    assert [p.name for p in tmp_path.iterdir()] == ["shapes.npz"]  # written atomically, nothing else left
