"""int8 post-training quantization for sampling, calibrated per time-step group (Q-Diffusion, EDA-DM style).

The transformer blocks' token-wise linear layers (attention in/out, feed-forward, MoE experts) get int8
weights, one scale per output channel, and int8 activations whose range is **calibrated**: float sampling
of ``calib`` samples (a fixed calibration seed) records each layer's largest input magnitude in each of
``groups`` equal slices of the time axis, since a DiT's activation ranges drift along the trajectory. At
sampling time a layer clips its input to its group's range and quantizes with that fixed scale, so in a call
of a given shape a row's result depends on that row alone: sample ``i`` still depends only on the seed, ``i``
and the batch size, not on the other samples of its batch (which PyTorch's per-tensor dynamic quantization
would break). The patch embedder, the adaLN modulation (fed by
the conditioning vector, a few rows per sample), time/label embedders and the final layer stay in float.

Kernels: on the CPU, oneDNN's int8 GEMM (``onednn::qlinear_pointwise``, as PyTorch's x86 inductor
quantization uses it): the input is quantized in one pass (uint8, zero point 128, saturating at the
calibrated range) and the scales and bias are applied inside the kernel. In the GELU feed-forward the
GELU runs inside fc1's kernel, whose output goes straight to uint8 at fc2's calibrated input range, so the
wide hidden activations never exist in float. Where oneDNN's op is missing, fbgemm's
``quantized::linear_dynamic`` (its range pinned to the calibrated one by two extra rows). On CUDA,
``torch._int_mm`` (int8 x int8 -> int32 on the tensor cores) with the scales applied after.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskdit.model.blocks import Mlp

#: Layers inside a block that stay float (their input is the conditioning vector, not the tokens).
FLOAT_LAYERS = ("adaLN_modulation",)
#: The smallest value tanh-GELU takes (at x = -0.75): the low end of the fused feed-forward's hidden range.
GELU_MIN = -0.1700


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch has oneDNN's int8 linear on the CPU (x86 builds); checked once by a tiny call."""
    try:
        packed = torch.ops.onednn.qlinear_prepack(torch.ones(2, 2, dtype=torch.int8), None)
        out = torch.ops.onednn.qlinear_pointwise(torch.full((1, 2), 129, dtype=torch.uint8), 1.0, 128, packed,
                                                 torch.ones(2), torch.zeros(2, dtype=torch.long), None, 1.0, 0,
                                                 torch.float32, "none", [], "")
        return bool(torch.equal(out, torch.full((1, 2), 2.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _onednn_for(x: torch.Tensor) -> bool:
    """Whether ``x`` goes through the oneDNN kernels: a non-empty CPU tensor where they exist."""
    return x.device.type == "cpu" and x.numel() > 0 and onednn_available()


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """``x`` as uint8 codes ``round(x / scale) + zero_point``, saturating at 0 and 255, in one vectorised pass
    (PyTorch's quantize kernel; the codes are read from its storage without a copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(x.float().contiguous(), scale, zero_point, torch.quint8)
    return torch.empty(0, dtype=torch.uint8).set_(q.untyped_storage(), 0, q.shape, q.stride())


class TimeGroup:
    """Which time-step group the running model call belongs to; set by the quantized model's forward."""

    def __init__(self, groups: int):
        self.groups, self.index = groups, 0

    def set(self, t: torch.Tensor) -> None:
        value = float(t.reshape(-1)[0])  # every sample of a sampling call shares its time
        self.index = min(self.groups - 1, max(0, int(value * self.groups)))

    def hook(self, model: nn.Module) -> Any:
        """Set the group from each call's time (``model(x, t, ...)``)."""
        return model.register_forward_pre_hook(
            lambda _m, args, kwargs: self.set(args[1] if len(args) > 1 else kwargs["t"]), with_kwargs=True)


class Int8Linear(nn.Module):
    """A linear layer with per-output-channel int8 weights and int8 inputs clipped to a calibrated range
    (one per time-step group)."""

    def __init__(self, linear: nn.Linear, ranges: torch.Tensor, group: TimeGroup):
        super().__init__()
        w = linear.weight.detach().float()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group = group
        self.ranges = [max(float(r), 1e-8) for r in ranges]  # clip |x| per group
        w_scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("w_int8", (w / w_scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())
        self._packed: Any = None
        self._onednn: Any = None
        self._w_zero = torch.zeros(self.out_features, dtype=torch.long)  # oneDNN's weight zero points

    def _cpu_packed(self) -> Any:
        if self._packed is None:
            with warnings.catch_warnings():  # PyTorch marks its quantized tensor types deprecated
                warnings.simplefilter("ignore")
                q = torch._make_per_channel_quantized_tensor(self.w_int8, self.w_scale.double(),
                                                             torch.zeros(self.out_features, dtype=torch.long), 0)
                self._packed = torch.ops.quantized.linear_prepack(q, self.bias)
        return self._packed

    def onednn_packed(self) -> Any:
        if self._onednn is None:
            self._onednn = torch.ops.onednn.qlinear_prepack(self.w_int8, None)
        return self._onednn

    def onednn(self, codes: torch.Tensor, scale: float, zero_point: int, out_scale: float = 1.0,
               out_zero_point: int = 0, out_dtype: torch.dtype = torch.float32, post_op: str = "none") -> torch.Tensor:
        """oneDNN's int8 GEMM on uint8 ``codes`` of scale ``scale``; float output, or uint8 codes of
        ``out_scale``; ``post_op="gelu"`` applies tanh-GELU in the kernel."""
        algorithm = "tanh" if post_op == "gelu" else ""
        return torch.ops.onednn.qlinear_pointwise(codes, scale, zero_point, self.onednn_packed(), self.w_scale,
                                                  self._w_zero, self.bias, out_scale, out_zero_point, out_dtype,
                                                  post_op, [], algorithm)

    def input_codes(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The input as uint8 codes (zero point 128) of the running group's range, and their scale."""
        scale = 2 * self.ranges[self.group.index] / 255
        return quantize_u8(x.reshape(-1, self.in_features), scale, 128), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        limit = self.ranges[self.group.index]
        shape = x.shape
        if _onednn_for(x):
            codes, scale = self.input_codes(x)
            out = self.onednn(codes, scale, 128)
        elif x.device.type == "cpu":
            # fbgemm picks its scale from the input's min and max: two extra rows at -limit and +limit pin
            # it to the calibrated range; one clamp writes the rows and any layout copy in one pass
            rows = torch.empty(x[..., 0].numel() + 2, shape[-1])
            torch.clamp(x.reshape(-1, shape[-1]), -limit, limit, out=rows[:-2])
            rows[-2:] = torch.tensor([[-limit], [limit]])
            out = torch.ops.quantized.linear_dynamic(rows, self._cpu_packed(), False)[:-2]
        else:
            out = self._cuda(x.reshape(-1, shape[-1]).float().clamp(-limit, limit), limit)
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _cuda(self, rows: torch.Tensor, limit: float) -> torch.Tensor:
        scale = limit / 127
        q = (rows / scale).round().clamp(-127, 127).to(torch.int8)
        rows_needed = max(24, -(-len(q) // 8) * 8)  # _int_mm wants more than 16 rows, a multiple of 8
        if rows_needed != len(q):
            q = torch.cat([q, q.new_zeros(rows_needed - len(q), q.shape[1])])
        out = torch._int_mm(q, self.w_int8.t())[:len(rows)].float() * (self.w_scale * scale)
        return out if self.bias is None else out + self.bias


class Int8Mlp(nn.Module):
    """The GELU feed-forward in int8: on the CPU (oneDNN) fc1's kernel applies the GELU and writes uint8 codes
    of fc2's calibrated input range ``[GELU_MIN, range]`` (asymmetric: GELU's output is almost all positive),
    which fc2 reads as they are; elsewhere the two :class:`Int8Linear` layers with a float GELU between."""

    def __init__(self, mlp: Mlp, ranges_fc1: torch.Tensor, ranges_fc2: torch.Tensor, group: TimeGroup):
        super().__init__()
        self.fc1, self.fc2 = Int8Linear(mlp.fc1, ranges_fc1, group), Int8Linear(mlp.fc2, ranges_fc2, group)
        self.group = group

    def hidden_scale(self) -> tuple[float, int]:
        """Scale and zero point of the hidden codes in the running time group."""
        high = max(self.fc2.ranges[self.group.index], -GELU_MIN)
        scale = (high - GELU_MIN) / 255
        return scale, round(-GELU_MIN / scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if not _onednn_for(x):
            return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
        codes, scale = self.fc1.input_codes(x)
        h_scale, h_zero = self.hidden_scale()
        hidden = self.fc1.onednn(codes, scale, 128, h_scale, h_zero, torch.uint8, "gelu")
        out = self.fc2.onednn(hidden, h_scale, h_zero)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.fc2.out_features)


def _targets(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.blocks.named_modules()
            if isinstance(m, nn.Linear) and not any(part in name.split(".") for part in FLOAT_LAYERS)]


def calibrate(model: nn.Module, groups: int, run: Callable[[], Any]) -> dict[str, torch.Tensor]:
    """Per target layer, the largest input magnitude in each time-step group while ``run()`` samples."""
    group = TimeGroup(groups)
    ranges = {name: torch.zeros(groups) for name, _ in _targets(model)}

    def observe(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            peak = float(args[0].detach().abs().max()) if args[0].numel() else 0.0
            ranges[name][group.index] = max(float(ranges[name][group.index]), peak)
        return hook

    handles = [m.register_forward_pre_hook(observe(name)) for name, m in _targets(model)]
    pre = group.hook(model)
    try:
        run()
    finally:
        for h in [*handles, pre]:
            h.remove()
    return ranges


def quantize(model: nn.Module, ranges: dict[str, torch.Tensor], groups: int) -> nn.Module:
    """A copy of ``model`` whose target layers are :class:`Int8Linear` with the calibrated ``ranges``."""
    q = copy.deepcopy(model)
    group = TimeGroup(groups)

    def replace(name: str, module: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        setattr(q.blocks.get_submodule(parent_name) if parent_name else q.blocks, child, module)

    for name, mlp in list(q.blocks.named_modules()):
        if type(mlp) is Mlp:
            replace(name, Int8Mlp(mlp, ranges[f"{name}.fc1"], ranges[f"{name}.fc2"], group))
    for name, linear in _targets(q):
        replace(name, Int8Linear(linear, ranges[name], group))
    group.hook(q)
    return q


def int8_model(model: nn.Module, groups: int, key: tuple, run_calibration: Callable[[nn.Module], Any]) -> nn.Module:
    """The int8 copy of ``model`` for sampling settings ``key``, calibrated by ``run_calibration(model)`` the
    first time and cached on ``model`` (the float weights must not change in between: the cache is keyed by
    the weights' version counters)."""
    cache = model.__dict__.setdefault("_int8_cache", {})
    version = tuple(p._version for p in model.parameters())
    full_key = (groups, key, version)
    if full_key not in cache:
        cache.clear()
        ranges = calibrate(model, groups, lambda: run_calibration(model))
        cache[full_key] = quantize(model, ranges, groups)
    return cache[full_key]
