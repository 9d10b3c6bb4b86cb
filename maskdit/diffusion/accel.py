"""Sampling accelerators: training-free ways to spend fewer FLOPs per sample, each a plug-in around a model.

    maskdit sample RUN --out x.png --accel cache:every=3

* ``ras:ratio=R[,every=M]`` (region-adaptive sampling, RAS): each call recomputes only the ``R`` share
  of each sample's tokens whose prediction changed most between the two previous calls; the others keep
  their cached prediction. Full calls first, every ``M``-th (5) and last. ``ratio=1`` is exactly uncached.
* ``cache:every=K[,tail=F]`` (block caching, as in Delta-DiT / Faster Diffusion's feature reuse): consecutive
  sampling steps change the middle blocks' contribution little, so the residual they add (output minus
  input of blocks ``1..depth-2``) is computed on one model call in ``K`` and reused on the others; the
  first and last blocks always run. The first call and the last ``F`` share of the calls (0.2 by default:
  the fine detail at the end of the trajectory) always run in full. ``every=1`` is exactly uncached.

An accelerator is a context manager ``make(model, calls, **options)`` that changes how ``model`` runs
while it is open (``calls``: model calls the sampler will make per batch, for schedules); its options
arrive checked by :func:`parse_accel` against the ``rules`` it is registered with. Calls are
counted per input shape, so classifier-free guidance's doubled batch keeps its own cache, and each sample's
cached values are its own: sample ``i`` still depends only on the seed, ``i`` and the batch size, and given
tokens stay exact (the sampler holds them).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from maskdit.errors import ConfigError
from maskdit.registry import Registry

ACCELS: Registry[Any] = Registry("accelerator", key="--accel")


def parse_accels(spec: str) -> list[tuple[str, dict[str, float]]]:
    """``"int8+ras:ratio=0.5"`` -> one ``(name, options)`` per ``+``-joined part; each name at most once."""
    parts = spec.split("+")
    if not all(parts):
        raise ConfigError(f"--accel {spec!r}: an empty part; join accelerators with one '+', e.g. int8+ras:ratio=0.5")
    parsed = [parse_accel(part) for part in parts]
    names = [name for name, _ in parsed]
    if len(set(names)) != len(names):
        raise ConfigError(f"--accel {spec!r}: each accelerator may appear once")
    if {"cache", "ras"} <= set(names):
        raise ConfigError(f"--accel {spec!r}: cache and ras both reuse earlier calls' results; choose one")
    return parsed


#: Option value rules: ``(test, what a value must be)``; an accelerator names one per option (``rules``).
WHOLE = (lambda v: v >= 1 and v == int(v), "a whole number of at least 1")
UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
SHARE = (lambda v: 0 < v <= 1, "in (0, 1]")
#: int8: more time-step groups than this only costs memory (a DDPM chain has 1000 times); more calibration
#: samples than this only costs time (ranges settle within a few hundred).
MAX_GROUPS, MAX_CALIB = 1000, 65536
GROUPS = (lambda v: 1 <= v <= MAX_GROUPS and v == int(v), f"a whole number in [1, {MAX_GROUPS}]")
CALIB = (lambda v: 1 <= v <= MAX_CALIB and v == int(v), f"a whole number in [1, {MAX_CALIB}]")


def parse_accel(spec: str) -> tuple[str, dict[str, float]]:
    """``"cache:every=3,tail=0.2"`` -> ``("cache", {"every": 3.0, "tail": 0.2})``; refuses what it cannot read
    and values outside the accelerator's ``rules`` (NaN and infinity always), so a bad value is refused when
    the option is read, before any sampling starts."""
    name, _, rest = spec.partition(":")
    if name not in ACCELS:
        raise ConfigError(f"--accel {spec!r}: unknown accelerator {name!r}: choose one of {', '.join(ACCELS.names())}")
    options: dict[str, float] = {}
    facts = ACCELS.entry(name).facts
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        allowed = facts["options"]
        if not eq or key not in allowed:
            raise ConfigError(f"--accel {spec!r}: {part!r} is not an option of {name} (options: "
                              f"{', '.join(f'{k}=' for k in allowed)})")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--accel {spec!r}: {key} must be a number, got {value!r}") from None
        ok, wanted = facts.get("rules", {}).get(key, (lambda v: True, "a finite number"))
        if not math.isfinite(number) or not ok(number):  # NaN and infinity first: the rules may call int()
            raise ConfigError(f"--accel {spec!r}: {name} option {key} must be {wanted}, got {value!r}")
        options[key] = number
    return name, options


@ACCELS.register("cache", "reuse the middle blocks' residual on K-1 of every K model calls (every=K, tail=F)",
                 options=("every", "tail"), rules={"every": WHOLE, "tail": UNIT})
@contextlib.contextmanager
def block_cache(model: torch.nn.Module, calls: int, every: float = 2, tail: float = 0.2) -> Iterator[None]:
    every_k = int(every)  # options arrive checked against the accelerator's rules (parse_accel)
    if getattr(model, "skips", None) is not None:
        raise ConfigError("--accel cache reuses a run of consecutive blocks; a model with long skips (MDT's layout) "
                          "joins blocks across the stack: use ras or int8")
    depth = len(model.blocks)
    start, end = 1, depth - 1
    if end <= start:  # nothing in the middle to cache
        yield
        return
    full_from = int(calls * (1 - tail))
    counters: dict[tuple[int, ...], int] = {}
    residuals: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor | None]] = {}
    plain = model.run_blocks

    def run_blocks(tokens: torch.Tensor, c: Any, first: int = 0, last: int | None = None,
                   pos: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        if first != 0 or last is not None or pos is not None:  # a partial or token-thinned pass: as it is
            return plain(tokens, c, first, last, pos)
        key = tuple(tokens.shape)
        index = counters.get(key, 0)
        counters[key] = index + 1
        h, c = plain(tokens, c, 0, start)
        if index % every_k == 0 or index >= full_from or key not in residuals:
            middle, after = plain(h, c, start, end)
            text = None if c.text is None or after.text is c.text else after.text - c.text  # a joint model's text
            residuals[key] = (middle - h, text)
            h, c = middle, after
        else:
            residual, text = residuals[key]
            h = h + residual
            c = c if text is None else c.with_text(c.text + text)
        return plain(h, c, end)

    model.run_blocks = run_blocks  # an instance attribute: the class's method is untouched
    try:
        yield
    finally:
        del model.run_blocks


@ACCELS.register("ras", "region-adaptive: recompute only the share R of tokens whose prediction changes most "
                 "(ratio=R, every=M full calls)", options=("ratio", "every"),
                 rules={"ratio": SHARE, "every": WHOLE})
@contextlib.contextmanager
def region_adaptive(model: torch.nn.Module, calls: int, ratio: float = 0.5, every: float = 5) -> Iterator[None]:
    """RAS: after two full calls, each call runs the model on each sample's ``ratio`` share of tokens whose
    prediction moved most between the last two calls (they attend among themselves) and keeps the cached
    prediction for the rest; every ``every``-th call and the last one run in full. ``ratio=1`` is exactly
    uncached. A video model with factorised attention recomputes whole tubes (places across all frames)."""
    from maskdit.grid import patchify, unpatchify
    from maskdit.masks import num_kept

    plain = model.forward
    state: dict[tuple[int, ...], dict[str, Any]] = {}
    thinnable = getattr(model, "fusion", None) is None and ratio < 1
    tubes = getattr(model, "attention", "full") == "factorised"

    def choose(change: torch.Tensor) -> torch.Tensor:
        """The tokens to recompute: ``(B, K)`` sorted, or for factorised video attention whole tubes (the
        same places in every frame, by their change summed over frames) as a ``(B, T, K)`` grid index."""
        if not tubes:
            return change.topk(num_kept(change.shape[1], 1 - ratio), dim=1).indices.sort(dim=1).values
        frames = model.token_grid[0]
        per_place = change.reshape(len(change), frames, -1).sum(dim=1)  # (B, S)
        places = per_place.topk(num_kept(per_place.shape[1], 1 - ratio), dim=1).indices.sort(dim=1).values
        return torch.arange(frames, device=change.device)[None, :, None] * per_place.shape[1] + places[:, None, :]

    def forward(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, keep_idx: Any = None,
                **kw: Any) -> torch.Tensor:
        if keep_idx is not None or kw.get("route") is not None or not thinnable:
            return plain(x, t, y, keep_idx, **kw)
        key = tuple(x.shape)
        s = state.setdefault(key, {"calls": 0, "out": None, "change": None})
        index = s["calls"]
        s["calls"] += 1
        if s["change"] is None or index % int(every) == 0 or index + 1 >= calls:
            out = plain(x, t, y, **kw)
        else:
            keep = choose(s["change"])
            thin = plain(x, t, y, keep, **kw)  # (B, K, P) prediction tokens of the chosen places
            keep = keep.flatten(1)
            tokens = patchify(s["out"], model.patch_size).scatter(1, keep.unsqueeze(-1).expand_as(thin), thin)
            out = unpatchify(tokens, model.patch_size, x.shape[2:], s["out"].shape[1])
        if s["out"] is not None:
            s["change"] = patchify((out - s["out"]).float().abs(), model.patch_size).mean(-1)
        s["out"] = out
        return out

    model.forward = forward
    try:
        yield
    finally:
        del model.forward


@ACCELS.register("int8", "int8 weights and activations in the blocks' linear layers, activation ranges "
                 "calibrated per time-step group (groups=G, calib=N float samples)", options=("groups", "calib"),
                 rules={"groups": GROUPS, "calib": CALIB}, transform=True)
def int8_transform(model: torch.nn.Module, calibrate: Callable[[torch.nn.Module, int], Any], key: tuple,
                   groups: float = 4, calib: float = 64) -> torch.nn.Module:
    """The int8 copy of ``model`` (cached on it per sampling settings ``key``); ``calibrate(model, n)``
    samples ``n`` calibration samples in float."""
    from maskdit.diffusion.quant import int8_model

    return int8_model(model, int(groups), (key, int(calib)), lambda m: calibrate(m, int(calib)))


def transformed(model: torch.nn.Module, spec: str | None, calibrate: Callable[[torch.nn.Module, int], Any],
                key: tuple) -> torch.nn.Module:
    """``model`` after the transform accelerators ``spec`` names (itself if none)."""
    for name, options in parse_accels(spec) if spec else []:
        if ACCELS.entry(name).facts.get("transform"):
            model = ACCELS.get(name)(model, calibrate, key, **options)
    return model


@contextlib.contextmanager
def accelerated(model: torch.nn.Module, spec: str | None, calls: int) -> Iterator[None]:
    """Open the per-batch accelerators ``spec`` names around ``model`` (no-op for ``None``)."""
    with contextlib.ExitStack() as stack:
        for name, options in parse_accels(spec) if spec else []:
            if not ACCELS.entry(name).facts.get("transform"):
                stack.enter_context(ACCELS.get(name)(model, calls, **options))
        yield
