"""Sample-quality scores over feature arrays: plain NumPy/SciPy, no TensorFlow.

The functions take features (N, d) of real and generated images (from the pretrained
classifier, see `ganlab.evaluation.classifier`) or its outputs, and return plain Python numbers
(`mode_stats` also the class histogram):

- `frechet_distance`: FID, the Frechet distance between Gaussians fitted to two sets.
- `classifier_score`: exp E[KL(p(y|x) || p(y))], MNIST's analogue of the Inception Score.
- `kid`: Kernel Inception Distance, unbiased MMD^2 with a cubic kernel, over subsets.
- `precision_recall`: k-NN manifold precision and recall (Kynkaanniemi et al., 2019).
- `density_coverage`: k-NN density and coverage (Naeem et al., 2020).
- `mode_stats`: how many digit classes appear, and the KL from the uniform class mix.
- `nearest_neighbours` / `memorization`: each sample's nearest reference row, and the share
  of samples closer to the training set than real unseen images are.
- `class_stats` / `class_frechet_distances`: FID within each predicted class (+inf for a class
  the generator leaves out or under-samples), `worst` the worst class.
- `mean_and_spread` / `mean_over_draws`: a score's mean and sample standard deviation over repeated
  draws; every score of the draws combined as a run logs them.

Means, covariances and every sum are float64. The large matrices (KID's kernels, the
pairwise distances of the k-NN scores) are float32 for speed; the distances are computed
in row blocks so memory stays bounded (16 MB per block) however many samples are compared.
"""

from __future__ import annotations

import math

import numpy as np

from ganlab.core import scores

BLOCK_ELEMENTS = 1 << 22  # entries of one float32 distance block: 16 MB


# ---------------------------------------------------------------------------- Frechet


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1) in float64; needs more samples than dimensions."""
    x = _as_2d_float64(features, "features")
    n, d = x.shape
    if n <= d:
        raise ValueError(
            f"the Frechet distance needs more samples than feature dimensions: got {n} samples "
            f"of dimension {d}, so the covariance would be singular by construction. Use at "
            f"least {d + 1} samples (thousands for a stable estimate)."
        )
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1)


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) equals tr((A S2 A)^(1/2)) with A = S1^(1/2): the same eigenvalues,
    but A S2 A is symmetric positive semi-definite, so a symmetric eigendecomposition gives
    real eigenvalues (clipped at 0 against round-off) and no complex parts to discard,
    even when a covariance is singular.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = len(mu1)
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"mismatched statistics: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} and {sigma2.shape}."
        )
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(distance, 0.0))  # tiny negatives are round-off of identical sets


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets a (N, d) and b (M, d); N and M must exceed d."""
    _check_same_dim(a, b)
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


# ---------------------------------------------------------------------------- classifier score


def classifier_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))): 1 (no confident or no varied classes) up to the class count."""
    p = _as_2d_float64(probs, "probs")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1, atol=1e-4):
        raise ValueError("classifier_score needs probabilities: non-negative rows summing to 1.")
    marginal = p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0)  # 0 log 0 = 0
    return float(np.exp(terms.sum(axis=1).mean()))


# ---------------------------------------------------------------------------- KID


def kid(
    a: np.ndarray, b: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of unbiased MMD^2 over random subsets.

    Kernel k(x, y) = (x.y / d + 1)^3. Each subset draws subset_size rows of a and of b
    without replacement; subset_size is clipped to the smaller set.
    """
    x, y = _as_2d_float64(a, "a"), _as_2d_float64(b, "b")
    _check_same_dim(x, y)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"kid needs at least 2 samples per set; got {len(x)} and {len(y)}.")
    # The kernel matrices are the cost: float32 halves it, and its ~1e-7 relative error is
    # far below KID's spread over subsets. Every sum is accumulated in float64.
    x, y = x.astype(np.float32), y.astype(np.float32)
    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets)
    for i in range(num_subsets):
        xs = x[rng.choice(len(x), m, replace=False)]
        ys = y[rng.choice(len(y), m, replace=False)]
        estimates[i] = _mmd2_unbiased(xs, ys)
    return float(estimates.mean()), float(estimates.std())


def _cubic_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x.y / d + 1)^3 for all pairs, in float32 (callers sum it in float64)."""
    kernel = x @ y.T
    kernel /= x.shape[1]
    kernel += 1
    cube = kernel * kernel
    cube *= kernel  # two products: several times faster than ** 3
    return cube


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    k_xx, k_yy, k_xy = _cubic_kernel(x, x), _cubic_kernel(y, y), _cubic_kernel(x, y)
    m = len(x)
    # Unbiased: the within-set means leave out the diagonal (a sample with itself).
    off_diagonal = _sum64(k_xx) - _sum64(np.diagonal(k_xx)) + _sum64(k_yy) - _sum64(np.diagonal(k_yy))
    return float(off_diagonal / (m * (m - 1)) - 2 * _sum64(k_xy) / m**2)


def _sum64(array: np.ndarray) -> float:
    return float(np.sum(array, dtype=np.float64))


# ---------------------------------------------------------------------------- k-NN scores


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row (shape (N,))."""
    x = _as_2d_float64(x, "x")
    if not 1 <= k < len(x):
        raise ValueError(f"k-nearest-neighbour radii need 1 <= k < N; got k={k}, N={len(x)}.")
    radii = np.empty(len(x))
    for rows, d2 in _distance_blocks(x, x):
        # k is small: knocking out the nearest point k times (the row itself first, at
        # distance 0) and taking the minimum is several times faster than np.partition.
        row_index = np.arange(len(d2))
        for _ in range(k):
            d2[row_index, d2.argmin(axis=1)] = np.inf
        radii[rows] = d2.min(axis=1)
    return np.sqrt(radii)


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, real_radii: np.ndarray | None = None
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019).

    Each set's manifold is the union of balls around its points, radius = distance to
    the k-th nearest neighbour in the same set. Precision: fraction of fake samples
    inside the real manifold. Recall: fraction of real samples inside the fake manifold.
    `real_radii` may pass precomputed `knn_radii(real, k)` (e.g. cached).
    """
    real, fake = _as_2d_float64(real, "real"), _as_2d_float64(fake, "fake")
    _check_same_dim(real, fake)
    real_r2 = _squared(real_radii if real_radii is not None else knn_radii(real, k), len(real))
    fake_r2 = _squared(knn_radii(fake, k), len(fake))
    fake_in_real = np.zeros(len(fake), dtype=bool)
    real_in_fake = np.zeros(len(real), dtype=bool)
    for rows, d2 in _distance_blocks(fake, real):  # d2[i, j]: fake i to real j
        fake_in_real[rows] = (d2 <= real_r2).any(axis=1)
        real_in_fake |= (d2 <= fake_r2[rows, None]).any(axis=0)
    return float(fake_in_real.mean()), float(real_in_fake.mean())


def density_coverage(
    real: np.ndarray, fake: np.ndarray, k: int = 5, real_radii: np.ndarray | None = None
) -> tuple[float, float]:
    """Density and coverage (Naeem et al., 2020), from k-NN balls around real samples only.

    Density: how many real balls contain a fake sample, on average, divided by k (about 1
    when fake matches real; above 1 when fakes crowd dense real regions). Coverage:
    fraction of real balls that contain at least one fake sample.
    """
    real, fake = _as_2d_float64(real, "real"), _as_2d_float64(fake, "fake")
    _check_same_dim(real, fake)
    real_r2 = _squared(real_radii if real_radii is not None else knn_radii(real, k), len(real))
    balls_hit = 0
    nearest_fake_d2 = np.full(len(real), np.inf, dtype=np.float32)
    for _, d2 in _distance_blocks(fake, real):
        balls_hit += int(np.count_nonzero(d2 <= real_r2))
        np.minimum(nearest_fake_d2, d2.min(axis=0), out=nearest_fake_d2)
    density = balls_hit / (k * len(fake))
    coverage = float(np.mean(nearest_fake_d2 <= real_r2))
    return float(density), coverage


def _distance_blocks(a: np.ndarray, b: np.ndarray):
    """Yield (row slice, squared distances of those rows of a to all of b), block by block.

    Distances are float32: twice the speed of float64, and their relative error (~1e-6)
    only matters for points within a hair of a ball's edge.
    """
    a, b = a.astype(np.float32), b.astype(np.float32)
    b_sq = np.einsum("ij,ij->i", b, b)
    rows_per_block = max(1, BLOCK_ELEMENTS // len(b))
    for start in range(0, len(a), rows_per_block):
        rows = slice(start, min(start + rows_per_block, len(a)))
        block = a[rows]
        d2 = block @ b.T  # |x - y|^2 = |x|^2 + |y|^2 - 2 x.y, built in place
        d2 *= -2
        d2 += np.einsum("ij,ij->i", block, block)[:, None]
        d2 += b_sq[None, :]
        yield rows, np.maximum(d2, 0, out=d2)  # round-off can dip below 0


def _squared(radii: np.ndarray, n: int) -> np.ndarray:
    radii = np.asarray(radii, np.float64)
    if radii.shape != (n,):
        raise ValueError(f"real_radii has shape {radii.shape}; expected ({n},), one per real sample.")
    return (radii**2).astype(np.float32)  # compared with float32 distances


# ---------------------------------------------------------------------------- modes


def mode_stats(
    predicted_labels: np.ndarray, num_classes: int = 10, min_fraction: float = 0.01
) -> tuple[int, float, np.ndarray]:
    """(classes holding at least min_fraction of samples, KL(class mix || uniform), histogram)."""
    labels = np.asarray(predicted_labels).ravel()
    if len(labels) == 0:
        raise ValueError("mode_stats needs at least one predicted label.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"predicted labels must lie in 0..{num_classes - 1}.")
    histogram = np.bincount(labels.astype(np.int64), minlength=num_classes)
    fractions = histogram / len(labels)
    modes_covered = int(np.count_nonzero(fractions >= min_fraction))
    present = fractions > 0
    kl_uniform = float(np.sum(fractions[present] * np.log(fractions[present] * num_classes)))
    return modes_covered, kl_uniform, histogram


# ---------------------------------------------------------------------------- memorization


def nearest_neighbours(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each row of a's nearest row of b (Euclidean; shapes (N,) each)."""
    a, b = _as_2d_float64(a, "a"), _as_2d_float64(b, "b")
    _check_same_dim(a, b)
    if len(b) == 0:
        raise ValueError("nearest_neighbours needs at least one reference row.")
    # argmin_j |x - y_j|^2 = argmin_j (|y_j|^2 - 2 x.y_j): one product and one addition per block in
    # float32; the chosen distance is then recomputed exactly in float64.
    a32, minus_2b = a.astype(np.float32), (-2 * b).astype(np.float32)
    b_sq = np.einsum("ij,ij->i", b, b).astype(np.float32)
    indices = np.empty(len(a), dtype=np.int64)
    rows_per_block = max(1, BLOCK_ELEMENTS // len(b))
    for start in range(0, len(a), rows_per_block):
        block = a32[start:start + rows_per_block] @ minus_2b.T
        block += b_sq
        indices[start:start + len(block)] = block.argmin(axis=1)
    distances = np.sqrt(np.sum((a - b[indices]) ** 2, axis=1))
    return distances, indices


def memorization_threshold(real_nearest_distances: np.ndarray, quantile: float) -> float:
    """The `quantile` of real unseen images' distances to their nearest training image."""
    return float(np.quantile(np.asarray(real_nearest_distances, np.float64), quantile))


def memorization(fake_nearest_distances: np.ndarray, threshold: float) -> float:
    """Share of generated samples whose nearest training image lies strictly closer than `threshold`."""
    distances = np.asarray(fake_nearest_distances, np.float64)
    if distances.size == 0:
        raise ValueError("memorization needs at least one generated sample.")
    return float(np.mean(distances < threshold))


# ---------------------------------------------------------------------------- per-class FID


def class_stats(features: np.ndarray, labels: np.ndarray, num_classes: int = 10):
    """(counts (C,), means (C, d), covariances (C, d, d)) of each class's features; a class with
    too few samples for a covariance (at most d) gets NaN mean and covariance."""
    x = _as_2d_float64(features, "features")
    labels = np.asarray(labels).ravel()
    d = x.shape[1]
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes]
    means, covariances = np.full((num_classes, d), np.nan), np.full((num_classes, d, d), np.nan)
    for label in range(num_classes):
        if counts[label] > d:
            means[label], covariances[label] = gaussian_stats(x[labels == label])
    return counts, means, covariances


def class_frechet_distances(real_means, real_covariances, fake_features, fake_labels) -> np.ndarray:
    """FID of each class (C,): generated samples of a predicted class against the real ones of that
    class. A class the generator gave too few samples for a covariance (at most d, none included)
    scores +inf, the worst possible: it is missing or under-sampled, and leaving it out would let
    a generator collapsed onto a few clean classes score better than one that draws every class a
    little off. NaN only where the real images of a class are too few (the reference cannot score
    that class for any generator)."""
    num_classes = len(real_means)
    _, fake_means, fake_covariances = class_stats(fake_features, fake_labels, num_classes)
    distances = np.full(num_classes, np.nan)
    for label in range(num_classes):
        if np.isnan(real_means[label]).any():
            continue
        if np.isnan(fake_means[label]).any():
            distances[label] = math.inf
            continue
        distances[label] = frechet_distance_from_stats(real_means[label], real_covariances[label],
                                                       fake_means[label], fake_covariances[label])
    return distances


def worst(values: np.ndarray, better: str = "lower") -> float:
    """The worst value over every class (largest for lower-is-better), an infinite one (a missing
    class) included; only NaN (a class the reference cannot score) is passed over; NaN when all are."""
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan
    return float(values.max() if better == "lower" else values.min())


# ---------------------------------------------------------------------------- repeated draws


def mean_and_spread(values) -> tuple[float, float]:
    """(mean, sample standard deviation, ddof=1) of repeated draws of a score; one draw is
    returned unchanged, bit for bit, with a NaN spread, and so is the spread of draws of which one
    is infinite (`fid_class_worst` of a class never drawn)."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("mean_and_spread needs at least one value.")
    if len(values) == 1:
        return values[0], math.nan
    array = np.asarray(values, np.float64)
    if not np.isfinite(array).all():
        with np.errstate(invalid="ignore"):  # inf - inf: a NaN mean, said by the value itself
            return float(array.mean()), math.nan
    return float(array.mean()), float(array.std(ddof=1))


def mean_over_draws(results) -> dict[str, float]:
    """The scores of `eval.repeats` draws (Evaluations, or score dicts) as a run logs them: each score's
    mean over the draws, and with several draws fid's spread as `fid_sampling_std`. Training and
    `python -m ganlab.evaluate --run-id` both combine draws here, so a re-score reproduces the logged one."""
    draws = [getattr(result, "scores", result) for result in results]
    found = {}
    for name in draws[0]:
        found[name], spread = mean_and_spread([draw[name] for draw in draws])
        if name == scores.FID and len(draws) > 1:
            found[scores.sampling_std(name)] = spread
    return found


# ---------------------------------------------------------------------------- helpers


def _as_2d_float64(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} has shape {array.shape}; expected (N, d) features.")
    return array


def _check_same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if np.shape(a)[-1] != np.shape(b)[-1]:
        raise ValueError(f"feature dimensions differ: {np.shape(a)} vs {np.shape(b)}.")
