"""Control adherence: how closely samples follow the control maps they were drawn with.

* ``edges``: the edge F1 between the sample's edges and the map (both :func:`~maskdit.conditions.control.edges`
  of the grey level, pixel-exact, pooled over all samples), with its precision and recall.
* ``mask``: the intersection over union of the sample's region and the map's (pooled over samples).
* a degradation (``lowres:F``, ``blur:S``, ``noise:S``) and ``image``: the PSNR and SSIM between the degraded
  sample and the map (the sample is a restoration consistent with its input), and for every signal the PSNR and
  SSIM between the sample and the image the map was computed from (how much of that image it recovers).

PSNR and SSIM are over pixels in [0, 1], averaged over samples.
"""

from __future__ import annotations

import torch

from maskdit.conditions.control import compute_signal, parse_signal
from maskdit.evaluate.metrics import ssim


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (dB) of model-space images ``(B, C, H, W)`` in [-1, 1] (a range of 2: pixels in [0, 1])."""
    mse = ((a.float() - b.float()) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def edge_scores(sample_edges: torch.Tensor, target_edges: torch.Tensor) -> dict[str, float]:
    """Precision, recall and F1 of predicted edge pixels (bool) against the target's, pooled over the batch."""
    hits = (sample_edges & target_edges).sum().item()
    precision = hits / max(1, sample_edges.sum().item())
    recall = hits / max(1, target_edges.sum().item())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"edge_f1": f1, "edge_precision": precision, "edge_recall": recall}


def adherence(samples: torch.Tensor, sources: torch.Tensor, signal: str) -> dict[str, float]:
    """Adherence of model-space ``samples`` to the maps of ``sources`` (the images the maps came from)."""
    target, got = compute_signal(signal, sources), compute_signal(signal, samples)
    scores = {"source_psnr": psnr(samples, sources).mean().item(), "source_ssim": small_ssim(samples, sources)}
    name = parse_signal(signal)[0]
    if name == "edges":
        scores.update(edge_scores(got > 0, target > 0))
    elif name == "mask":
        inside, wanted = got > 0, target > 0
        scores["mask_iou"] = ((inside & wanted).sum() / (inside | wanted).sum().clamp_min(1)).item()
    else:
        scores["control_psnr"] = psnr(got, target).mean().item()
        scores["control_ssim"] = small_ssim(got, target)
    return scores


def small_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of model-space images (pixels in [0, 1]): the usual 11-pixel window (sigma 1.5), or a 7-pixel one
    (sigma 0.75) for images smaller than 11 pixels a side (the 8x8 digits); NaN below 7."""
    side = min(a.shape[-2:])
    if side < 7:
        return float("nan")
    return ssim((a.float() + 1) / 2, (b.float() + 1) / 2, sigma=1.5 if side >= 11 else 0.75).mean().item()
