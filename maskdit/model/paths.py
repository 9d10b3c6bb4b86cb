"""Block paths: how a batch of tokens passes a DiT's blocks. Each masked-training layout that changes which
tokens which blocks see is one function here; :meth:`DiT.features <maskdit.model.dit.DiT.features>` picks one
per call from the model's layout and the call's options, and recipes call them directly.

Paths run block ranges through ``model.run_blocks`` (the caching accelerators wrap that method; MDT's skips,
which join tensors between blocks, call the blocks one by one) and take ``keep_idx`` ``(B, K)``: the grid index
of each kept token, which travels with it to position-aware layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from maskdit.errors import ConfigError
from maskdit.masks import gather_tokens, scatter_tokens
from maskdit.registry import Registry


def check_fusion_route(route: Sequence[int], depth: int) -> tuple[int, int]:
    """A SPRINT deep path ``(START, END)`` that fits ``depth``: dense blocks before and after it."""
    start, end = int(route[0]), int(route[1])
    if not 1 <= start < end < depth:
        raise ConfigError(f"fusion route [{start}, {end}] does not fit a depth-{depth} model: SPRINT needs "
                          f"1 <= START < END < depth (dense blocks before and after the sparse path)")
    return start, end


def check_tread_route(route: Sequence[int], depth: int) -> tuple[int, int]:
    """A TREAD route ``(START, END)`` that fits ``depth``: tokens leave after block START, re-enter at END."""
    start, end = int(route[0]), int(route[1])
    if not 0 <= start < end <= depth:
        raise ConfigError(f"mask.route [{start}, {end}] does not fit a depth-{depth} model: tokens must leave after "
                          f"a block START and re-enter at END with 0 <= START < END <= {depth}")
    return start, end


#: name -> ``fn(model, tokens, c, keep_idx, **options) -> (tokens, c)``; fact ``options``: what a call may add.
PATHS: Registry[Any] = Registry("block path")


@PATHS.register("plain", "the patch mixer (first mixer_depth blocks) on every token, the rest on the kept ones",
                options=("end", "places"))
def plain(model: nn.Module, tokens: torch.Tensor, c: torch.Tensor, keep_idx: torch.Tensor | None = None,
          end: int | None = None, places: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
    """Blocks ``0..end-1``; with ``keep_idx`` the blocks after the patch mixer see only the kept tokens. ``places``
    ``(B, n)``: the grid index of each of the ``n`` tokens given (a smaller grid's corner of the training one;
    ``None``: all ``N`` in order), what ``keep_idx`` then indexes."""
    if keep_idx is None:
        return model.run_blocks(tokens, c, 0, end, pos=places)
    tokens, c = model.run_blocks(tokens, c, 0, model.mixer_depth, pos=places)
    keep_idx = keep_idx if places is None else keep_idx.reshape(len(keep_idx), -1)
    pos = keep_idx if places is None else places.gather(1, keep_idx)
    return model.run_blocks(gather_tokens(tokens, keep_idx), c, model.mixer_depth, end, pos=pos)


@PATHS.register("routed", "TREAD: the kept tokens pass blocks START..END-1, the others skip them and re-enter",
                options=("route",))
def routed(model: nn.Module, tokens: torch.Tensor, c: torch.Tensor, keep_idx: torch.Tensor,
           route: Sequence[int]) -> tuple[torch.Tensor, Any]:
    """Every block on all tokens except blocks ``START..END-1`` of ``route``, which only ``keep_idx`` passes;
    the other tokens skip them and re-enter before block ``END`` as they left."""
    start, end = route
    tokens, c = model.run_blocks(tokens, c, 0, start)
    through, c = model.run_blocks(gather_tokens(tokens, keep_idx), c, start, end, pos=keep_idx)
    return model.run_blocks(scatter_tokens(through, keep_idx, tokens, model.num_tokens), c, end)


@PATHS.register("fused", "SPRINT: dense shallow blocks, the deep blocks on the kept tokens, fusion, dense final "
                "blocks", options=("path_drop",))
def fused(model: nn.Module, tokens: torch.Tensor, c: torch.Tensor, keep_idx: torch.Tensor | None = None,
          path_drop: torch.Tensor | bool | None = None) -> tuple[torch.Tensor, Any]:
    """SPRINT on a model with a ``fusion_route``. ``path_drop=True`` skips the deep blocks altogether; a
    ``(B,)`` bool tensor masks them per sample (path-drop guidance's cheap unconditional branch)."""
    start, end = model.fusion_route
    shallow, c = model.run_blocks(tokens, c, 0, start)
    if path_drop is True:
        deep = None
    else:
        deep = shallow if keep_idx is None else gather_tokens(shallow, keep_idx)
        deep, c = model.run_blocks(deep, c, start, end, pos=keep_idx)
    mask = path_drop if torch.is_tensor(path_drop) else None
    return model.run_blocks(model.fusion(shallow, deep, keep_idx, mask), c, end)


@PATHS.register("skips", "MDT's layout: encoder blocks with U-Net long skips, then decoder blocks that each join "
                "the embedded input", options=("side",))
def skips(model: nn.Module, embedded: torch.Tensor, c: torch.Tensor, keep_idx: torch.Tensor | None = None,
          side: nn.Module | None = None) -> tuple[torch.Tensor, Any]:
    """A model with ``long_skips`` on the embedded tokens ``(B, N, D)``: encoder blocks with U-Net skips, then
    the decoder position table and decoder blocks that each join the embedded input. Only the ``keep_idx``
    tokens pass. With ``side`` (MDT's masked training pass, a
    :class:`~maskdit.model.decoders.SideInterpolater`) the encoder runs on the kept tokens, ``side``
    completes every token (with the decoder table) and the decoder blocks run on all ``N``."""
    half, stack, pos = model.skip_half, [], keep_idx
    tokens = embedded if pos is None else gather_tokens(embedded, pos)
    inputs = tokens  # what the decoder blocks join: the embedded input of the tokens that pass
    for i in range(model.depth):
        if i == 2 * half and side is not None and pos is not None:  # MDT's masked pass completes every token
            tokens, pos, inputs = side(tokens, c, pos, model.decoder_pos_embed), None, embedded
        elif i == 2 * half:
            table = model.decoder_pos_embed.expand(len(tokens), -1, -1)
            tokens = tokens + (table if pos is None else gather_tokens(table, pos))
        if i >= half:
            skip = stack.pop() if i < 2 * half else inputs
            tokens = model.skips[str(i)](torch.cat([tokens, skip], dim=-1))
        tokens = model.blocks[i](tokens, c, pos)
        if i < half:
            stack.append(tokens)
    return tokens, c


def path_of(model: nn.Module, keep_idx: torch.Tensor | None, end: int | None, path_drop: Any,
            route: Sequence[int] | None) -> tuple[str, dict[str, Any]]:
    """The path a call takes and its options: the model's own layout (SPRINT fusion, MDT skips), TREAD
    routing when asked with kept tokens, else plain; options a path cannot honour are refused."""
    if path_drop is not None and model.fusion is None:
        raise ConfigError("path drop (path-drop guidance) needs a SPRINT model: train with mask.recipe=sprint")
    if model.fusion is not None:
        name, options = "fused", {"path_drop": path_drop}
        unit = "a SPRINT model (fusion) runs its blocks as one unit"
    elif route is not None and keep_idx is not None:
        name, options = "routed", {"route": route}
        unit = "routing (TREAD) runs every block"
    elif model.skips is not None:
        name, options = "skips", {}
        unit = "a model with long skips (MDT's layout) runs its blocks as one unit"
    else:
        return "plain", {"end": end}
    if end is not None:
        raise ConfigError(f"{unit}: features(end=...) is not supported" + (" with route" if name == "routed" else ""))
    if name == "routed":
        options["route"] = check_tread_route(route, model.depth)
    return name, options
