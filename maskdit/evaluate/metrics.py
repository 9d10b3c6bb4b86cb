"""Distribution and image metrics on feature vectors and images: the arithmetic, no networks.

* :func:`frechet_distance` — FID's distance between two Gaussians, in float64.
* :func:`kid` — kernel inception distance: unbiased MMD^2 with the cubic polynomial kernel over subsets.
* :func:`precision_recall` — k-nearest-neighbour manifolds (Kynkäänniemi et al., 2019).
* :func:`psnr` and :func:`ssim` — per-image fidelity against ground truth, for the task models.

Every function here is deterministic and never touches the global RNG: where it samples (KID subsets,
equal-size subsets for precision/recall) it uses a local generator with a fixed seed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from maskdit.errors import ConfigError


def _as_float64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return (x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)).astype(np.float64)


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, ``N - 1``) of ``(N, D)`` features, in float64."""
    f = _as_float64(features)
    if f.ndim != 2 or len(f) < 2:
        raise ConfigError(f"need at least 2 feature vectors of shape (N, D) for statistics, got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues clipped)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)``. The trace of the matrix square root is taken
    as the sum of square roots of the eigenvalues of ``S1^1/2 S2 S1^1/2`` (symmetric, same spectrum as
    ``S1 S2``), which stays real and stable for the rank-deficient covariances of small sample sets.
    """
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    s1, s2 = _as_float64(sigma1), _as_float64(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ConfigError(f"Fréchet distance of mismatched statistics: means {mu1.shape} vs {mu2.shape}, "
                          f"covariances {s1.shape} vs {s2.shape}; use the same feature extractor for both")
    root1 = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fid_from_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def kid(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel inception distance: mean and std over subsets of the unbiased MMD^2 estimate.

    Kernel ``k(x, y) = (x.y / D + 1)^3`` (Bińkowski et al., 2018). Each subset draws
    ``min(subset_size, len(a), len(b))`` vectors from each set without replacement.
    """
    x, y = _as_float64(a), _as_float64(b)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ConfigError(f"KID needs two (N, D) feature sets with the same D, got {x.shape} and {y.shape}")
    n = min(subset_size, len(x), len(y))
    if n < 2:
        raise ConfigError(f"KID needs at least 2 samples in each set, got {len(x)} and {len(y)}")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        xs = x[rng.choice(len(x), n, replace=False)]
        ys = y[rng.choice(len(y), n, replace=False)]
        kxx = (xs @ xs.T / d + 1) ** 3
        kyy = (ys @ ys.T / d + 1) ** 3
        kxy = (xs @ ys.T / d + 1) ** 3
        values[i] = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (n * (n - 1)) - 2 * kxy.mean()
    return float(values.mean()), float(values.std())


def _kth_neighbour_radius(f: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from every row of ``f`` to its ``k``-th nearest other row."""
    radii = []
    for i in range(0, len(f), chunk):
        d = torch.cdist(f[i : i + chunk], f)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(radii)


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, chunk: int) -> float:
    """Share of ``queries`` inside at least one ball ``(manifold[j], radii[j])``."""
    inside = []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(queries[i : i + chunk], manifold)
        inside.append((d <= radii[None]).any(dim=1))
    return torch.cat(inside).double().mean().item()


def precision_recall(
    real: torch.Tensor | np.ndarray,
    fake: torch.Tensor | np.ndarray,
    k: int = 3,
    seed: int = 0,
    chunk: int = 1024,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of ``fake`` against ``real`` features.

    Each set's manifold is the union of balls around its points with radius the distance to the ``k``-th
    nearest neighbour. Precision: share of fake points inside the real manifold (are samples realistic?).
    Recall: share of real points inside the fake manifold (is the data covered?). The radii depend on the
    set size, so the larger set is first subsampled (fixed seed) to the size of the smaller one.
    """
    r = torch.from_numpy(_as_float64(real))
    f = torch.from_numpy(_as_float64(fake))
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise ConfigError(f"precision/recall needs two (N, D) feature sets with the same D, got "
                          f"{tuple(r.shape)} and {tuple(f.shape)}")
    n = min(len(r), len(f))
    if n <= k:
        raise ConfigError(f"precision/recall with k={k} needs more than {k} samples per set, got {n}")
    gen = torch.Generator().manual_seed(seed)
    if len(r) > n:
        r = r[torch.randperm(len(r), generator=gen)[:n]]
    if len(f) > n:
        f = f[torch.randperm(len(f), generator=gen)[:n]]
    precision = _coverage(r, _kth_neighbour_radius(r, k, chunk), f, chunk)
    recall = _coverage(f, _kth_neighbour_radius(f, k, chunk), r, chunk)
    return precision, recall


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image of ``(B, ...)`` batches: ``10 log10(range^2 / MSE)``.

    Identical images give ``inf``.
    """
    if x.shape != y.shape:
        raise ConfigError(f"PSNR of mismatched shapes {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(sigma: float, dtype: torch.dtype) -> torch.Tensor:
    radius = int(3.5 * sigma + 0.5)  # the truncation scikit-image uses, so the windows agree
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al., 2004) per image of ``(B, C, H, W)`` batches.

    Gaussian-weighted local statistics (``sigma`` 1.5, window ``2 * int(3.5 sigma + 0.5) + 1`` = 11),
    population covariances, valid windows only, averaged over positions and channels: the settings of
    ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ConfigError(f"SSIM needs two (B, C, H, W) batches of one shape, got {tuple(x.shape)} and "
                          f"{tuple(y.shape)}")
    g = _gaussian_window(sigma, torch.float64)
    if len(g) > min(x.shape[-2:]):
        raise ConfigError(f"SSIM window {len(g)} (sigma {sigma}) is larger than the {x.shape[-2]}x{x.shape[-1]} "
                          f"images: pass a smaller sigma")
    c = x.shape[1]
    x, y = x.double(), y.double()

    def blur(z: torch.Tensor) -> torch.Tensor:
        z = F.conv2d(z, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return F.conv2d(z, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)
