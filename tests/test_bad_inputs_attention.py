"""The bad-input corpus of the attention kinds (``model.attention``, ``model.window``, ``model.proxy_size``,
``model.linear_conv``, ``model.tile_global``) and of converting a run between kinds (``init_from``), including pairings
that would otherwise build something silently different from what was asked; the harness and its five checks are in
``corpus.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import SAMPLE, TRAIN, C, Case, Runs, assert_distinct, check

KIND = [*TRAIN, "model.attention=window"]

CASES: list[Case] = [
    C("attention-kind-unknown", [*TRAIN, "model.attention=flash"], "model.attention"),
    C("attention-window-negative", [*KIND, "model.window=-1"], "model.window"),
    C("attention-window-zero", [*KIND, "model.window=0"], "model.window"),
    C("attention-window-all-axes-zero", [*KIND, "model.window=[0,0]"], "model.window"),
    C("attention-window-radii-per-axis-mismatch", [*KIND, "model.window=[1,2,3]"], "rank 2"),
    C("attention-window-not-a-number", [*KIND, "model.window=wide"], "model.window"),
    C("attention-proxy-size-zero", [*TRAIN, "model.attention=proxy", "model.proxy_size=0"], "model.proxy_size"),
    C("attention-linear-conv-even", [*TRAIN, "model.attention=linear", "model.linear_conv=4"], "model.linear_conv"),
    C("attention-linear-conv-negative", [*TRAIN, "model.attention=linear", "model.linear_conv=-3"],
      "model.linear_conv"),
    C("attention-tile-global-negative", [*TRAIN, "model.tile_global=-1"], "model.tile_global"),
    C("attention-tile-on-images", [*TRAIN, "model.attention=tile"], "video grid"),
    C("attention-window-with-relative-bias", [*KIND, "model.rel_pos_bias=true"], "rel_pos_bias"),
    C("attention-window-full-blocks-beyond-depth", [*KIND, "model.full_blocks=[7]"], "full_blocks"),
    # converting a run: the kinds share their layers, a different grid or width does not load
    C("attention-convert-other-patch", [*KIND, "init_from={img}", "model.patch_size=1"], "does not match the model"),
    C("attention-convert-other-width", [*TRAIN, "model.attention=linear", "init_from={img}", "model.hidden_size=48"],
      "does not match the model"),
    # distilling the attention outputs of a conversion (CLEAR)
    C("distill-attention-negative", [*KIND, "distill.teacher={img}", "distill.attention=-1"], "distill.attention"),
    C("distill-attention-without-teacher", [*KIND, "distill.attention=1"], "needs a teacher"),
    C("distill-attention-with-dropped-tokens", [*KIND, "init_from={img}", "distill.teacher={img}",
                                                "distill.attention=1", "mask.recipe=drop", "mask.ratio=0.5"],
      "runs the student otherwise"),
    # sampling at another size
    C("attention-rope-scaling-without-size", [*SAMPLE, "--rope-scaling", "yarn"], "give --size"),
    C("attention-entropy-scale-without-size", [*SAMPLE, "--entropy-scale"], "give --size"),
    C("attention-rope-scaling-unknown", [*SAMPLE, "--size", "16x16", "--rope-scaling", "linear"], "--rope-scaling"),
    C("attention-rope-scaling-on-a-table-model", [*SAMPLE, "--size", "16x16", "--rope-scaling", "ntk"],
      "model.pos=rope"),
    C("attention-size-off-the-patch", [*SAMPLE, "--size", "7x7"], "multiples of the patch"),
    C("tiled-without-size", [*SAMPLE, "--tiled"], "give --size"),
    C("tiled-with-rope-scaling", [*SAMPLE, "--size", "16x16", "--tiled", "--rope-scaling", "yarn"],
      "takes no --rope-scaling"),
    C("tiled-below-the-training-size", [*SAMPLE, "--size", "4x8", "--tiled"], "at least the training size"),
    C("tiled-strength-zero", [*SAMPLE, "--size", "16x16", "--tiled", "--tile-strength", "0"], "--tile-strength"),
    C("tiled-structure-above-one", [*SAMPLE, "--size", "16x16", "--tiled", "--structure", "2"], "--structure"),
    C("tiled-overlap-one", [*SAMPLE, "--size", "16x16", "--tiled", "--tile-overlap", "1"], "--tile-overlap"),
    # training at several sizes
    C("sizes-malformed", [*TRAIN, "data.sizes=[6by8]"], "data.sizes"),
    C("sizes-not-a-list-of-sizes", [*TRAIN, "data.sizes=[0x8]"], "data.sizes"),
    C("sizes-larger-than-the-data", [*TRAIN, "data.sizes=[16x16]"], "at most the data's 8x8"),
    C("sizes-off-the-patch", [*TRAIN, "data.sizes=[5x5]"], "a multiple of the patch"),
    C("sizes-wrong-rank", [*TRAIN, "data.sizes=[8]"], "must have 2 axes"),
    C("sizes-with-routing", [*TRAIN, "data.sizes=[4x4]", "mask.recipe=tread", "mask.ratio=0.5", "mask.route=[0,1]"],
      "use mask.recipe=drop"),
    C("sizes-with-token-ids", [*TRAIN, "data.sizes=[4x4]", "objective.name=masked", "data.levels=17"],
      "token ids"),
    C("sizes-with-tasks", [*TRAIN, "data.sizes=[4x4]", "task.names=[inpaint]"], "condition masks"),
]


def test_corpus_is_distinct():
    assert_distinct(CASES, 37)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, runs: Runs, tmp_path: Path, monkeypatch, capfd):
    check(case, runs, tmp_path, monkeypatch, capfd)
