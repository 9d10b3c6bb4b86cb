"""Masked-training recipes: the loss of one training step when a share of the tokens is dropped.

A recipe is an ``nn.Module`` that owns whatever training-only parameters it needs (none, an MAE decoder,
an MDT side-interpolater) and computes ``loss(model, objective, x0, y, t, noise, keep_idx, given)`` ->
``(loss, parts)`` where ``parts`` are detached scalar tensors (read on the host only at log steps). It runs
inside :class:`maskdit.training.step.TrainingStep`, so a DDP/FSDP wrapper around that one module sees all of it. With
``keep_idx=None`` (nothing dropped this step) every recipe reduces to the plain denoising loss, plus
the MDT full pass. Sampling never sees a recipe: it runs the bare DiT on all tokens.

* ``drop`` (a): the blocks run on kept tokens; the loss averages over kept tokens only. It also takes a
  condition mask ``given`` (tasks): given tokens enter clean and the loss covers kept *and* generated
  tokens; given tokens may be dropped like any other (they are context, not targets).
* ``mae`` (b, MaskDiT): as ``drop``, plus an MAE decoder whose output on *dropped* tokens is regressed
  onto the noisy input there, averaged over dropped tokens and weighted by ``aux_weight``.
* ``mdt`` (c, MDT): a full pass on all tokens plus a masked pass where kept tokens go through the
  encoder blocks, the side-interpolater fills the dropped ones, and the last ``decoder_depth`` backbone
  blocks run on all tokens; both passes regress the objective's target on all tokens.
* ``tread`` (TREAD, token routing): after block ``START`` the ``mask.ratio`` share of tokens leaves, skips
  blocks ``START..END-1`` and re-enters unchanged before block ``END``; nothing is thrown away, the loss
  covers every (generated) token, no decoder or finetune stage is needed, and sampling runs the plain model.

* ``sprint`` (SPRINT): a model with a fusion route runs dense shallow blocks on all tokens, its deep blocks
  on the kept ones, fuses both and ends with dense blocks; loss on all tokens; path drop for guidance.
* ``maskdit`` (MaskDiT as published): the model's last ``decoder_depth`` blocks decode every token, with a
  mask token in the dropped places; denoising loss on kept tokens, MAE loss on dropped ones.

Deferred masking (the patch mixer) is a property of the model (``DiT.mixer_depth``) and works with all
three. Training-only parameters always receive a gradient (zero when unused) so DDP never sees a
parameter that took no part in a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from maskdit.diffusion.objectives import (
    Objective,
    denoising_loss,
    prediction_loss,
    regression_pair,
    token_mse,
    training_pair,
)
from maskdit.errors import ConfigError, check_keys
from maskdit.grid import patchify
from maskdit.masks import DROP_SHAPES, SCHEDULES, gather_tokens, scatter_tokens
from maskdit.model.blocks import DEFAULT_BLOCK
from maskdit.model.decoders import MAEDecoder, SideInterpolater, dropped_mask
from maskdit.model.dit import DiT
from maskdit.model.paths import check_fusion_route, check_tread_route, skips
from maskdit.registry import Registry, one_of

#: name -> recipe class, built by ``cls.build(model, mask_config)``; facts ``tasks``: takes condition masks,
#: ``path_drop`` (optional): its ``loss`` takes the step's per-sample path drops (``mask.path_drop``),
#: ``token_ids`` (optional, default true): trains a masked model over token ids (no regression onto the input).
RECIPES: Registry[type] = Registry("recipe", key="mask.recipe")


@dataclass
class MaskConfig:
    recipe: str = "drop"  #: a maskdit.training.recipes.RECIPES entry: drop | mae | mdt (what fills the dropped tokens)
    ratio: float = 0.0  #: share of tokens dropped per step (the maximum for schedules); 0 = no masking
    ratio_min: float = 0.0  #: random: lower end of the range; increasing: the starting ratio
    schedule: str = "constant"  #: constant | random | linear_decay | cosine_decay | increasing
    shape: str = "random"  #: a maskdit.masks.DROP_SHAPES entry: random | tube | frame | structured
    schedule_steps: int | None = None  #: length of the schedule (default: steps)
    aux_weight: float = 0.1  #: mae: weight of the reconstruction loss on dropped tokens
    decoder_depth: int = 2  #: mae: decoder blocks; mdt: backbone blocks after the interpolater
    decoder_width: int | None = None  #: mae: decoder width (default: half the model width)
    route: list[int] | None = None  #: tread: [START, END]: blocks START..END-1 skip the routed tokens;
    #: sprint: blocks START..END-1 are the sparse deep path (default [2, depth - 2])
    path_drop: float = 0.1  #: sprint: share of samples whose deep path is replaced by mask tokens (for PDG)

    def validate(self) -> None:
        """Check every ``mask.*`` value on its own (what needs the model depth is a cross-section rule)."""
        check_keys("mask.", self, [
            ("recipe", self.recipe in RECIPES, "one of " + one_of(RECIPES.names())),
            ("ratio", 0 <= self.ratio < 1, "in [0, 1)"),
            ("ratio_min", 0 <= self.ratio_min <= self.ratio, "in [0, mask.ratio]"),
            ("schedule", self.schedule in SCHEDULES, "one of " + one_of(SCHEDULES.names())),
            ("shape", self.shape in DROP_SHAPES, "one of " + one_of(DROP_SHAPES.names())),
            ("path_drop", 0 <= self.path_drop < 1, "in [0, 1)"),
            ("schedule_steps", self.schedule_steps is None or self.schedule_steps >= 1, "null or at least 1"),
            ("aux_weight", self.aux_weight >= 0, "non-negative"),
            ("decoder_depth", self.decoder_depth >= 1, "at least 1"),
            ("decoder_width", self.decoder_width is None or self.decoder_width >= 2,
             "null or a positive even width"),
            ("route", self.route is None or (len(self.route) == 2 and 0 <= self.route[0] < self.route[1]),
             "null or [START, END] with 0 <= START < END <= model.depth"),
        ])

    def check_depth(self, depth: int) -> None:
        """The TREAD or SPRINT route fits a model of ``depth`` blocks."""
        if self.recipe == "sprint":
            try:
                sprint_route(self.route, depth)
            except ConfigError as e:
                raise ConfigError(f"config key mask.route does not fit mask.recipe=sprint: {e}") from e
        if self.route is not None and self.route[1] > depth:
            raise ConfigError(f"config key mask.route {self.route} ends after the last block: END must be at "
                              f"most model.depth={depth}")
        if self.recipe == "tread":
            try:
                tread_route(self.route, depth)
            except ConfigError as e:
                raise ConfigError(f"config key mask.route does not fit mask.recipe=tread: {e}") from e

    def check_decoder(self) -> None:
        """MAE's decoder has 4 heads: its width must divide by 4."""
        if self.recipe == "mae" and self.decoder_width is not None and self.decoder_width % 4:
            raise ConfigError(f"config key mask.decoder_width must be a multiple of 4 (the decoder has 4 heads), "
                              f"got {self.decoder_width}")



def _touch(module: nn.Module) -> torch.Tensor:
    """A zero that depends on every parameter of ``module`` (keeps DDP's reducer happy)."""
    return sum((p.sum() * 0.0 for p in module.parameters()), torch.zeros(()))


def _refuse_tasks(recipe: str, given: torch.Tensor | None) -> None:
    if given is not None:
        raise ConfigError(f"mask.recipe={recipe} does not support condition masks (tasks): use mask.recipe=drop")


def _parts(**values: torch.Tensor | float) -> dict[str, torch.Tensor]:
    return {k: v.detach() if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in values.items()}


@RECIPES.register("drop", "plain dropping: the loss covers kept tokens only", tasks=True, learned_variance=True)
class DropRecipe(nn.Module):
    """(a) Plain token dropping: denoising loss on kept tokens only."""

    name = "drop"

    @classmethod
    def build(cls, model: DiT, cfg: Any) -> DropRecipe:
        return cls()

    def loss(self, model: DiT, objective: Objective, x0: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor,
             noise: torch.Tensor, keep_idx: torch.Tensor | None, given: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = denoising_loss(model, objective, x0, y, t, noise, keep_idx, given)
        return loss, _parts(loss_denoise=loss)


@RECIPES.register("mae", "MaskDiT: + an MAE decoder's reconstruction loss on dropped tokens", tasks=False,
                  token_ids=False)
class MAERecipe(nn.Module):
    """(b) MaskDiT: denoising loss on kept tokens + ``aux_weight`` x reconstruction loss on dropped tokens."""

    name = "mae"

    def __init__(self, model: DiT, depth: int = 2, width: int | None = None, aux_weight: float = 0.1):
        super().__init__()
        self.decoder = MAEDecoder(model.token_grid, model.hidden_size, model.patch_dim, depth, width)
        self.aux_weight = aux_weight

    @classmethod
    def build(cls, model: DiT, cfg: Any) -> MAERecipe:
        return cls(model, cfg.decoder_depth, cfg.decoder_width, cfg.aux_weight)

    def loss(self, model: DiT, objective: Objective, x0: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor,
             noise: torch.Tensor, keep_idx: torch.Tensor | None, given: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        _refuse_tasks(self.name, given)
        if keep_idx is None or keep_idx[0].numel() == model.num_tokens:
            loss = denoising_loss(model, objective, x0, y, t, noise, keep_idx) + _touch(self).to(x0.device)
            return loss, _parts(loss_denoise=loss, loss_aux=0.0)
        x_t, target = regression_pair(objective, x0, noise, t, model.patch_size)
        kept, c = model.features(x_t, t, y, keep_idx)
        denoise = token_mse(model.head(kept, c, keep_idx), gather_tokens(target, keep_idx))
        reconstruction = self.decoder(kept, c, keep_idx)
        aux = token_mse(reconstruction, patchify(x_t, model.patch_size), dropped_mask(keep_idx, model.num_tokens))
        return denoise + self.aux_weight * aux, _parts(loss_denoise=denoise, loss_aux=aux)


@RECIPES.register("mdt", "MDT: full pass + masked pass through a side-interpolater", tasks=False,
                  learned_variance=True)
class MDTRecipe(nn.Module):
    """(c) MDT: full pass + masked pass through a side-interpolater placed ``decoder_depth`` blocks from the end.

    A model with MDT's own layout (``long_skips``, an MDT import) places it where MDT does: after the
    encoder blocks and their long skips, before the decoder blocks (``decoder_depth`` is then the model's);
    its side block is built like the model's blocks and the decoder position table reaches every token.
    """

    name = "mdt"

    def __init__(self, model: DiT, decoder_depth: int = 2):
        super().__init__()
        encoder_depth = model.depth - decoder_depth
        skips = model.skips is not None
        if not skips and not model.mixer_depth < encoder_depth <= model.depth - 1:
            raise ConfigError(
                f"mask.decoder_depth {decoder_depth} does not fit a depth-{model.depth} model with mixer_depth "
                f"{model.mixer_depth}: the interpolater needs at least one masked block before it and one after"
            )
        self.encoder_depth = encoder_depth
        self.interpolater = SideInterpolater(model.hidden_size, model.num_heads, model.mlp_ratio, pos_on_kept=skips,
                                             options=model.block_options if skips else DEFAULT_BLOCK)

    @classmethod
    def build(cls, model: DiT, cfg: Any) -> MDTRecipe:
        return cls(model, cfg.decoder_depth)

    def loss(self, model: DiT, objective: Objective, x0: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor,
             noise: torch.Tensor, keep_idx: torch.Tensor | None, given: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        _refuse_tasks(self.name, given)
        x_t, target = regression_pair(objective, x0, noise, t, model.patch_size)
        full = prediction_loss(model, objective, patchify(model(x_t, t, y), model.patch_size), target, x0, x_t, t)
        if keep_idx is None or keep_idx[0].numel() == model.num_tokens:
            return full + _touch(self).to(x0.device), _parts(loss_full=full, loss_masked=0.0)
        if model.skips is not None:
            tokens, c = skips(model, *model.inputs(x_t, t, y), keep_idx, side=self.interpolater)
        else:
            kept, c = model.features(x_t, t, y, keep_idx, end=self.encoder_depth)
            tokens = self.interpolater(kept, c, keep_idx, model.pos_embed)
            tokens, c = model.run_blocks(tokens, c, self.encoder_depth)  # every token again: positions in order
        masked = prediction_loss(model, objective, model.head(tokens, c), target, x0, x_t, t)
        return full + masked, _parts(loss_full=full, loss_masked=masked)


def default_route(depth: int) -> tuple[int, int]:
    """TREAD's route scaled to ``depth``: the paper's blocks 2 -> depth - 4 of a 28-block DiT-XL."""
    return max(1, round(2 * depth / 28)), depth - max(1, round(4 * depth / 28))


def tread_route(route: Sequence[int] | None, depth: int) -> tuple[int, int]:
    """The TREAD route for ``mask.route`` (``None``: :func:`default_route`), checked against ``depth``."""
    try:
        return check_tread_route(default_route(depth) if route is None else route, depth)
    except ConfigError as e:
        hint = " (this model is too shallow for the default route: set mask.route)" if route is None else ""
        raise ConfigError(f"{e}{hint}") from None


@RECIPES.register("tread", "TREAD routing: a share of tokens skips the middle blocks and re-enters; loss on all",
                  tasks=True)
class TreadRecipe(nn.Module):
    """Token routing (TREAD): the routed share of tokens bypasses blocks ``start..end-1``.

    The step's ``keep_idx`` names the tokens that go *through* the route (``1 - mask.ratio`` of them);
    the others keep the representation they had after block ``start - 1`` and rejoin before block
    ``end``. Every block before and after the route sees all tokens; the loss covers all generated tokens.
    """

    name = "tread"

    def __init__(self, model: DiT, route: tuple[int, int] | list[int] | None = None):
        super().__init__()
        self.route = tread_route(route, model.depth)
        if model.mixer_depth:
            raise ConfigError("mask.recipe=tread routes tokens past the middle blocks itself: set model.mixer_depth=0")

    @classmethod
    def build(cls, model: DiT, cfg: Any) -> TreadRecipe:
        return cls(model, cfg.route)

    def loss(self, model: DiT, objective: Objective, x0: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor,
             noise: torch.Tensor, keep_idx: torch.Tensor | None, given: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if keep_idx is None:  # nothing routed: the plain loss, bit for bit
            loss = denoising_loss(model, objective, x0, y, t, noise, None, given)
            return loss, _parts(loss_denoise=loss)
        x_t, target, weight = training_pair(objective, x0, noise, t, model.patch_size, given)
        tokens, c = model.features(x_t, t, y, keep_idx, given=given, route=self.route)
        loss = objective.token_loss(model.head(tokens, c), target, t, weight)
        return loss, _parts(loss_denoise=loss)


def default_sprint_route(depth: int) -> tuple[int, int]:
    """SPRINT's split scaled to ``depth``: the paper's 2 dense shallow and 2 dense final blocks of a
    28-block model (at least one each), the sparse deep path between them."""
    edge = max(1, round(2 * depth / 28))
    return edge, depth - edge


def sprint_route(route: Sequence[int] | None, depth: int) -> tuple[int, int]:
    """SPRINT's deep path for ``mask.route`` (``None``: :func:`default_sprint_route`), checked against ``depth``."""
    return check_fusion_route(default_sprint_route(depth) if route is None else route, depth)


@RECIPES.register("sprint", "SPRINT: dense shallow blocks, a sparse deep path on kept tokens, residual fusion; "
                  "loss on all", tasks=True, path_drop=True)
class SprintRecipe(nn.Module):
    """SPRINT (sparse-dense residual fusion) on a model built with ``fusion=(START, END)``.

    The step's ``keep_idx`` names the tokens the deep blocks ``START..END-1`` see (SPRINT: 25%, chosen by
    ``mask.shape=structured``); the dense shallow features of every token and the deep features (mask
    tokens where it skipped) are fused before the dense final blocks, and the loss covers every
    (generated) token. ``path_drop`` ``(B,)`` replaces a sample's whole deep path by mask tokens (drawn
    with probability ``mask.path_drop``), which teaches the model the cheap unconditional branch of
    path-drop guidance. The finetune stage is this recipe at ``mask.ratio=0`` from ``init_from``.
    """

    name = "sprint"

    def __init__(self, model: DiT):
        super().__init__()
        if model.fusion is None:
            raise ConfigError("mask.recipe=sprint needs a model built with a fusion route (maskdit builds one "
                              "from mask.route when mask.recipe=sprint)")

    @classmethod
    def build(cls, model: DiT, cfg: Any) -> SprintRecipe:
        return cls(model)

    def loss(self, model: DiT, objective: Objective, x0: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor,
             noise: torch.Tensor, keep_idx: torch.Tensor | None, given: torch.Tensor | None = None,
             path_drop: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_t, target, weight = training_pair(objective, x0, noise, t, model.patch_size, given)
        tokens, c = model.features(x_t, t, y, keep_idx, given=given, path_drop=path_drop)
        loss = objective.token_loss(model.head(tokens, c), target, t, weight)
        return loss, _parts(loss_denoise=loss)


@RECIPES.register("maskdit", "MaskDiT as published: the model's last blocks decode every token (mask tokens in "
                  "the gaps); + MAE loss on dropped tokens", tasks=True, token_ids=False)
class MaskDiTRecipe(nn.Module):
    """MaskDiT as published: the last ``decoder_depth`` backbone blocks are its decoder.

    Kept tokens pass the encoder blocks; a learned mask token (plus its position) fills every dropped
    place; the decoder blocks and the final layer run on all tokens, at training *and* at sampling (where
    nothing is dropped, so sampling is the plain model). The denoising loss covers the kept tokens; the
    MAE loss regresses the same output on dropped tokens onto the noisy input's patches, each patch
    normalised to zero mean and unit variance, weighted by ``aux_weight``. With a condition mask both
    losses cover generated tokens only (given ones enter clean and may be dropped like any other). (``mae``
    is the variant whose decoder is a separate training-only module.)
    """

    name = "maskdit"

    def __init__(self, model: DiT, decoder_depth: int = 2, aux_weight: float = 0.1):
        super().__init__()
        encoder_depth = model.depth - decoder_depth
        if not model.mixer_depth < encoder_depth:
            raise ConfigError(f"mask.decoder_depth {decoder_depth} leaves no encoder block after the patch mixer "
                              f"of a depth-{model.depth} model (mixer_depth {model.mixer_depth})")
        if model.fusion is not None:
            raise ConfigError("mask.recipe=maskdit does not take a SPRINT (fusion) model")
        self.encoder_depth, self.aux_weight = encoder_depth, aux_weight
        self.mask_token = nn.Parameter(torch.randn(model.hidden_size) * 0.02)

    @classmethod
    def build(cls, model: DiT, cfg: Any) -> MaskDiTRecipe:
        return cls(model, cfg.decoder_depth, cfg.aux_weight)

    def loss(self, model: DiT, objective: Objective, x0: torch.Tensor, y: torch.Tensor | None, t: torch.Tensor,
             noise: torch.Tensor, keep_idx: torch.Tensor | None, given: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if keep_idx is None or keep_idx[0].numel() == model.num_tokens:
            loss = denoising_loss(model, objective, x0, y, t, noise, None, given) + self.mask_token.sum() * 0.0
            return loss, _parts(loss_denoise=loss, loss_aux=0.0)
        x_t, target, weight = training_pair(objective, x0, noise, t, model.patch_size, given)
        kept, c = model.features(x_t, t, y, keep_idx, end=self.encoder_depth, given=given)
        fill = self.mask_token + model.pos_embed
        if given is not None:  # a dropped given token is still known to be given
            fill = fill + given.unsqueeze(-1).to(fill.dtype) * model.given_embed
        tokens = scatter_tokens(kept, keep_idx, fill, model.num_tokens)
        tokens, c = model.run_blocks(tokens, c, self.encoder_depth)
        out = model.head(tokens, c)
        dropped = dropped_mask(keep_idx, model.num_tokens)
        generated = 1.0 if weight is None else weight.to(dropped.dtype)
        denoise = token_mse(out, target, (1.0 - dropped) * generated)
        patches = patchify(x_t, model.patch_size).float()
        mean, var = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True, unbiased=patches.shape[-1] > 1)
        aux = token_mse(out, (patches - mean) / (var + 1e-6).sqrt(), dropped * generated)
        return denoise + self.aux_weight * aux, _parts(loss_denoise=denoise, loss_aux=aux)


def build_recipe(name: str, model: DiT, cfg: Any = None, **options: Any) -> nn.Module:
    """The :data:`RECIPES` entry ``name`` for ``model``, configured by a ``MaskConfig`` (or by keyword
    options ``decoder_depth``, ``decoder_width``, ``aux_weight`` over its defaults)."""
    if cfg is None:
        cfg = MaskConfig(**{k: v for k, v in options.items() if v is not None})
    if getattr(model, "precond", None) is not None and name != "drop":
        raise ConfigError(f"mask.recipe={name} runs the network in pieces, past the EDM preconditioning of this "
                          "model (a MaskDiT import): finetune it with mask.recipe=drop")
    return RECIPES.get(name).build(model, cfg)
