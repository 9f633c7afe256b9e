"""ganlab.evaluation.metrics on synthetic features whose answers are known in closed form or by brute force."""

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from ganlab.evaluation import metrics


def random_covariance(rng, d, scale=1.0):
    a = rng.normal(size=(d, d))
    return scale * a @ a.T / d + 0.05 * np.eye(d)


def sqrtm_reference(mu1, s1, mu2, s2):
    """The textbook formula with scipy's general (non-symmetric) matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ------------------------------------------------------------------ Frechet distance


def test_identical_sets_have_zero_fid():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_of_diagonal_gaussians_matches_closed_form():
    # Commuting covariances: FID = |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert metrics.frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_samples_approaches_the_population_value():
    rng = np.random.default_rng(1)
    d = 3
    mu1, mu2 = np.zeros(d), np.array([1.0, -1.0, 0.5])
    s1, s2 = random_covariance(rng, d), random_covariance(rng, d, scale=3.0)
    a = rng.multivariate_normal(mu1, s1, size=200_000)
    b = rng.multivariate_normal(mu2, s2, size=200_000)
    expected = sqrtm_reference(mu1, s1, mu2, s2)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("d", [2, 10, 64])
def test_fid_agrees_with_scipy_sqrtm_reference(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_covariance(rng, d), random_covariance(rng, d, scale=2.0)
    ours = metrics.frechet_distance_from_stats(mu1, s1, mu2, s2)
    assert ours == pytest.approx(sqrtm_reference(mu1, s1, mu2, s2), rel=1e-6)


def test_fid_from_samples_agrees_with_reference_on_their_statistics():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 20)), rng.gamma(2.0, size=(400, 20))
    reference = sqrtm_reference(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert metrics.frechet_distance(a, b) == pytest.approx(reference, rel=1e-6)


def test_fid_is_symmetric():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 8)), rng.normal(1.0, 2.0, size=(300, 8))
    assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-9)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # scipy's reference warns; ours need not
def test_fid_with_singular_covariance_is_finite_and_real():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(200, 6))
    a[:, 5] = 0.0  # a dead feature, as a ReLU unit can be
    b = rng.normal(size=(200, 6))
    value = metrics.frechet_distance(a, b)
    assert isinstance(value, float) and np.isfinite(value)
    stats_a, stats_b = metrics.gaussian_stats(a), metrics.gaussian_stats(b)
    assert value == pytest.approx(sqrtm_reference(*stats_a, *stats_b), rel=1e-6)


@pytest.mark.parametrize("n", [5, 8])
def test_fewer_samples_than_dimensions_is_refused(n):
    x = np.random.default_rng(6).normal(size=(n, 8))
    with pytest.raises(ValueError, match="more samples than feature dimensions"):
        metrics.frechet_distance(x, np.random.default_rng(7).normal(size=(100, 8)))


# ------------------------------------------------------------------ classifier score


def test_classifier_score_bounds():
    confident_balanced = np.eye(10)[np.arange(1000) % 10]
    assert metrics.classifier_score(confident_balanced) == pytest.approx(10.0)
    one_class = np.eye(10)[np.zeros(1000, dtype=int)]
    assert metrics.classifier_score(one_class) == pytest.approx(1.0)
    undecided = np.full((1000, 10), 0.1)
    assert metrics.classifier_score(undecided) == pytest.approx(1.0)


def test_classifier_score_of_two_confident_classes_is_two():
    probs = np.eye(10)[np.arange(100) % 2]
    assert metrics.classifier_score(probs) == pytest.approx(2.0)


# ------------------------------------------------------------------ KID


def test_kid_of_identical_distribution_is_near_zero_and_of_shifted_is_not():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same, _ = metrics.kid(a, a, num_subsets=20, subset_size=500)
    similar, _ = metrics.kid(a, b, num_subsets=20, subset_size=500)
    shifted, _ = metrics.kid(a, b + 1.0, num_subsets=20, subset_size=500)
    assert abs(same) < 0.01 and abs(similar) < 0.01
    assert shifted > 1.0


def test_kid_is_unbiased_mmd_with_cubic_kernel():
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(30, 4)), rng.normal(0.5, 1.0, size=(30, 4))

    def k(p, q):
        return (p @ q / 4 + 1) ** 3

    m = len(x)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    # subset_size above the set sizes is clipped to 30: every subset is the whole set.
    mean, std = metrics.kid(x, y, num_subsets=3, subset_size=1000)
    assert mean == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-5)  # Gram matrices are float32
    assert std == pytest.approx(0.0, abs=1e-9)


# ------------------------------------------------------------------ precision/recall, density/coverage


def brute_force_scores(real, fake, k_pr, k_dc):
    """The definitions, written out on full distance matrices (scipy cdist)."""
    rr, ff, fr = cdist(real, real), cdist(fake, fake), cdist(fake, real)
    real_radius = {k: np.sort(rr, axis=1)[:, k] for k in (k_pr, k_dc)}
    fake_radius = np.sort(ff, axis=1)[:, k_pr]
    precision = np.mean((fr <= real_radius[k_pr][None, :]).any(axis=1))
    recall = np.mean((fr <= fake_radius[:, None]).any(axis=0))
    inside = fr <= real_radius[k_dc][None, :]
    density = inside.sum() / (k_dc * len(fake))
    coverage = np.mean(inside.any(axis=0))
    return precision, recall, density, coverage


def test_knn_scores_match_brute_force_with_small_blocks(monkeypatch):
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 1000)  # many blocks of a few rows
    rng = np.random.default_rng(10)
    real = rng.normal(size=(400, 5))
    fake = rng.normal(0.3, 1.2, size=(300, 5))
    precision, recall = metrics.precision_recall(real, fake, k=3)
    density, coverage = metrics.density_coverage(real, fake, k=5)
    expected = brute_force_scores(real, fake, 3, 5)
    assert (precision, recall, density, coverage) == pytest.approx(expected, abs=1e-12)


def test_knn_radii_exclude_the_point_itself():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert metrics.knn_radii(x, 1) == pytest.approx([1.0, 1.0, 2.0, 4.0])
    assert metrics.knn_radii(x, 2) == pytest.approx([3.0, 2.0, 3.0, 6.0])


def test_precision_recall_density_coverage_real_vs_real_and_far_away():
    rng = np.random.default_rng(11)
    real, other_real = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    far = rng.normal(10.0, 1.0, size=(1000, 8))
    precision, recall = metrics.precision_recall(real, other_real)
    density, coverage = metrics.density_coverage(real, other_real)
    assert precision > 0.6 and recall > 0.6
    assert 0.7 < density < 1.3 and coverage > 0.9
    assert metrics.precision_recall(real, far) == (0.0, 0.0)
    assert metrics.density_coverage(real, far) == (0.0, 0.0)


def test_collapsed_fakes_have_precision_but_no_recall():
    rng = np.random.default_rng(12)
    real = rng.normal(size=(1000, 4))
    collapsed = real[:1] + rng.normal(scale=1e-3, size=(1000, 4))  # everything near one real point
    precision, recall = metrics.precision_recall(real, collapsed)
    _, coverage = metrics.density_coverage(real, collapsed)
    assert precision == 1.0
    assert recall < 0.01 and coverage < 0.01


# ------------------------------------------------------------------ modes


def test_mode_stats_of_balanced_and_collapsed_labels():
    covered, kl, histogram = metrics.mode_stats(np.arange(1000) % 10)
    assert covered == 10 and kl == pytest.approx(0.0, abs=1e-12)
    assert histogram.tolist() == [100] * 10

    covered, kl, histogram = metrics.mode_stats(np.full(500, 3))
    assert covered == 1 and kl == pytest.approx(np.log(10))
    assert histogram[3] == 500 and histogram.sum() == 500


def test_mode_stats_ignores_classes_below_min_fraction():
    labels = np.array([0] * 995 + [1] * 5)  # class 1 holds 0.5%: not a covered mode
    covered, _, _ = metrics.mode_stats(labels, min_fraction=0.01)
    assert covered == 1
    assert metrics.mode_stats(labels, min_fraction=0.005)[0] == 2
