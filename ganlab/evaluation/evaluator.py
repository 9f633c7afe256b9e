"""Score generated MNIST digits against real ones, in the pretrained classifier's feature space.

`Evaluator` holds the classifier (`ganlab.evaluation.classifier`) and the statistics of a real
reference set, by default the 10,000 MNIST test images. `Evaluator.score(images)` takes
generated images in [-1, 1], shaped (N, 784), (N, 28, 28) or (N, 28, 28, 1) (`ganlab.core.data.IMAGE_LAYOUTS`),
and returns {name: value} for every score of the registry `ganlab.core.scores.SCORE_NAMES`, in
the registry's order; `Evaluator.evaluate(images)` also returns the predicted-class histogram.

The real statistics (features, their mean and covariance, logit mean and covariance,
k-NN radii) cost one forward pass and two 10k x 10k distance sweeps, so they are cached
as an .npz in `$GANLAB_CACHE_DIR` (default `~/.cache/ganlab`). The file name is a hash
of the classifier's sha256, the real images' sha256, their count and the k values, so
changing any of them gives a new cache entry instead of stale numbers. A cache file that
cannot be read, or whose arrays have the wrong shapes for this classifier and reference
set, is a miss: recomputed and replaced. Statistics are computed by one process at a time (an
`flock` beside the cache file): jobs that start together on a cold cache, as a parallel sweep's
do, wait for the first one's file instead of each computing the same statistics.

Given the training images too (`from_dataset` passes them), the evaluator also scores
memorization: each generated image's nearest training image in the classifier's feature
space (the first `MEMORIZATION_SAMPLES` generated images), against the threshold the real
test images set (`MEMORIZATION_QUANTILE` of their own nearest-training distances), and
keeps the closest pairs for a picture. The training features and the test images'
distances are cached with the rest. Per-class FID compares, for each digit the classifier
predicts, the generated images of that class with the test images it assigns to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ganlab.evaluation import metrics
from ganlab.core import filelock, scores
from ganlab.evaluation.classifier import Classifier, softmax
from ganlab.evaluation.classifier import load as load_classifier
from ganlab.core.data import IMAGE_LAYOUTS_TEXT, IMAGE_SHAPE, Dataset, as_images, is_image_batch, to_unit_range
from ganlab.core.errors import InputError

CACHE_FORMAT = 2  # bump when the cached arrays change meaning
NUM_CLASSES = 10
MEMORIZATION_SAMPLES = 1000  # generated images searched against every training image (cost: N x 60,000 distances)
MEMORIZATION_QUANTILE = 0.01  # the threshold: this quantile of the test images' nearest-training distances
NEAREST_PAIRS = 10  # the closest (generated, training) pairs the picture shows
REFERENCE_SPLIT = "test"  # which of the dataset's splits the scores compare with

log = logging.getLogger(__name__)


def evaluation_noise(seed: int, num_samples: int, random_dim: int) -> np.ndarray:
    """The noise a generator is scored on: N(0, 1) from a NumPy generator seeded with `seed`.
    Training and `python -m ganlab.evaluate` both draw it here, so a run's seed reproduces its scores."""
    return np.random.default_rng(seed).standard_normal((num_samples, random_dim), dtype=np.float32)


def evaluation_noises(seed: int, num_samples: int, random_dim: int, repeats: int = 1) -> list[np.ndarray]:
    """`repeats` independent noise draws: the first is `evaluation_noise(seed, ...)` exactly (so a single
    draw scores as before), draw r > 0 comes from the seed sequence (seed, r)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    extra = [np.random.default_rng([seed, r]).standard_normal((num_samples, random_dim), dtype=np.float32)
             for r in range(1, repeats)]
    return [evaluation_noise(seed, num_samples, random_dim), *extra]


def for_job(eval_cfg, dataset: Dataset, seed: int, random_dim: int):
    """A job's scoring: the evaluator of `dataset` with the classifier `eval_cfg.classifier`, and the
    noise draws (`eval.repeats` of them) every evaluation of the job scores G on; (None, None) when
    evaluation is off. `eval_cfg`: the job's `eval` group (`ganlab.core.job_config.EvalConfig`)."""
    if not eval_cfg.enabled:
        return None, None
    scorer = Evaluator.from_dataset(dataset, classifier=load_classifier(eval_cfg.classifier, dataset=dataset.name))
    return scorer, evaluation_noises(seed, eval_cfg.num_samples, random_dim, eval_cfg.repeats)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GANLAB_CACHE_DIR") or Path.home() / ".cache" / "ganlab")


@dataclass(frozen=True)
class RealStats:
    """What the scores need from the real set, computed once per (classifier, data, k)."""

    features: np.ndarray  # (N, d) float64
    mu: np.ndarray
    sigma: np.ndarray
    logits_mu: np.ndarray
    logits_sigma: np.ndarray
    radii_precision: np.ndarray  # k-NN radii for precision/recall
    radii_density: np.ndarray  # k-NN radii for density/coverage
    class_counts: np.ndarray  # (C,) test images per predicted class
    class_mu: np.ndarray  # (C, d), NaN rows for classes with too few images
    class_sigma: np.ndarray  # (C, d, d)
    train_features: np.ndarray  # (M, d) float32; (0, d) without training images
    test_nearest: np.ndarray  # (N,) each test image's distance to its nearest training image; (0,) without


@dataclass(frozen=True)
class Evaluation:
    scores: dict[str, float]  # {name: value} for exactly scores.SCORE_NAMES, in that order
    histogram: np.ndarray  # predicted digit counts, (10,)
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, for benchmarks
    class_fid: np.ndarray | None = None  # (C,) FID per predicted class, NaN where too few samples
    class_counts: np.ndarray | None = None  # (C,) generated images per predicted class
    nearest_pairs: tuple[np.ndarray, np.ndarray] | None = None  # (generated, nearest training) images, closest first
    nearest_distances: np.ndarray | None = None  # (K,) their feature distances


class Evaluator:
    """Scores generated images against a fixed real set; see the module docstring.

    real_images: uint8 (N, *data.IMAGE_SHAPE). classifier: default the shipped one. seed: KID's
    subset draws. precision_k / density_k: the k of the k-NN balls (3 and 5, as in the
    papers). kid_subsets / kid_subset_size: 100 subsets of 1000, clipped to the set sizes.
    """

    def __init__(
        self,
        real_images: np.ndarray,
        classifier: Classifier | None = None,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        precision_k: int = 3,
        density_k: int = 5,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        train_images: np.ndarray | None = None,
    ):
        real_images = _check_real_images(real_images)
        self.train_images = None if train_images is None else _check_real_images(train_images)
        self.classifier = classifier if classifier is not None else load_classifier()
        self.seed = seed
        self.precision_k = precision_k
        self.density_k = density_k
        self.kid_subsets = kid_subsets
        self.kid_subset_size = kid_subset_size
        self.num_real = len(real_images)
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_path = cache_dir / f"real_stats_{self._cache_key(real_images)}.npz"
        self.cache_hit = False
        self.real = self._load_cached() or self._computed_once(real_images)
        self.memorization_threshold = (metrics.memorization_threshold(self.real.test_nearest, MEMORIZATION_QUANTILE)
                                       if len(self.real.test_nearest) else math.nan)

    @classmethod
    def from_dataset(cls, dataset: Dataset, **kwargs) -> Evaluator:
        """Reference set = the dataset's test images (10,000 for MNIST); memorization is measured
        against its training images."""
        kwargs.setdefault("train_images", dataset.x_train)
        return cls(dataset.x_test, **kwargs)

    def scoring_tags(self) -> dict[str, str]:
        """How this evaluator scores, for a run's tags (`eval.*`): runs are comparable only when these agree."""
        return {"eval.classifier_sha256": self.classifier.sha256, "eval.reference": REFERENCE_SPLIT,
                "eval.num_real": str(self.num_real), "eval.reference_key": self.cache_path.stem.rsplit("_", 1)[-1],
                "eval.memorization_samples": str(MEMORIZATION_SAMPLES if self.train_images is not None else 0)}

    def score(self, images: np.ndarray) -> dict[str, float]:
        return self.evaluate(images).scores

    def evaluate(self, images: np.ndarray) -> Evaluation:
        """All scores of generated images in [-1, 1] (any of data.IMAGE_LAYOUTS), plus the class histogram."""
        images = self._check_generated(images)
        real, clock = self.real, _Clock()
        features, logits = self.classifier.features_and_logits(images)
        features, logits = features.astype(np.float64), logits.astype(np.float64)
        clock.lap("classifier")
        fid = metrics.frechet_distance_from_stats(real.mu, real.sigma, *metrics.gaussian_stats(features))
        fid_logits = metrics.frechet_distance_from_stats(
            real.logits_mu, real.logits_sigma, *metrics.gaussian_stats(logits)
        )
        class_score = metrics.classifier_score(softmax(logits))
        modes, kl_uniform, histogram = metrics.mode_stats(logits.argmax(axis=1))
        clock.lap("fid+score+modes")
        kid_mean, kid_std = metrics.kid(real.features, features, self.kid_subsets, self.kid_subset_size, seed=self.seed)
        clock.lap("kernel_distance")
        precision, recall = metrics.precision_recall(
            real.features, features, self.precision_k, real_radii=real.radii_precision
        )
        clock.lap("precision_recall")
        density, coverage = metrics.density_coverage(
            real.features, features, self.density_k, real_radii=real.radii_density
        )
        clock.lap("density_coverage")
        predicted = logits.argmax(axis=1)
        class_fid = metrics.class_frechet_distances(real.class_mu, real.class_sigma, features, predicted)
        clock.lap("class_fid")
        memorized, pairs, pair_distances = math.nan, None, None
        if len(real.train_features):
            searched = features[:MEMORIZATION_SAMPLES]
            distances, nearest = metrics.nearest_neighbours(searched, real.train_features)
            memorized = metrics.memorization(distances, self.memorization_threshold)
            closest = np.argsort(distances, kind="stable")[:NEAREST_PAIRS]
            pairs = (images[closest], as_images(to_unit_range(self.train_images[nearest[closest]])))
            pair_distances = distances[closest]
        clock.lap("nearest_training")
        found = {
            scores.FID: fid, scores.FID_LOGITS: fid_logits, scores.CLASSIFIER_SCORE: class_score,
            scores.KID: kid_mean, scores.KID_STD: kid_std, scores.PRECISION: precision, scores.RECALL: recall,
            scores.DENSITY: density, scores.COVERAGE: coverage, scores.MODES_COVERED: float(modes),
            scores.KL_UNIFORM: kl_uniform, scores.MEMORIZATION: memorized,
            scores.FID_CLASS_WORST: metrics.worst(class_fid, scores.direction(scores.FID)),
        }
        return Evaluation(in_registry_order(found), histogram, clock.laps, class_fid=class_fid,
                          class_counts=np.bincount(predicted, minlength=NUM_CLASSES), nearest_pairs=pairs,
                          nearest_distances=pair_distances)

    def _check_generated(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if not is_image_batch(images.shape):
            raise InputError(
                f"generated images have shape {images.shape}; expected {IMAGE_LAYOUTS_TEXT} "
                "in [-1, 1], as the generator's tanh output."
            )
        minimum = max(self.classifier.feature_dim + 1, self.precision_k + 1, self.density_k + 1)
        if len(images) < minimum:
            raise InputError(
                f"{len(images)} generated images are too few to score: the Frechet distance needs "
                f"more samples than the {self.classifier.feature_dim} feature dimensions. Use "
                f"num_samples >= {minimum} (10000 is the standard)."
            )
        if not np.all(np.isfinite(images)):
            raise ValueError("generated images contain NaN or infinite values; the generator diverged.")
        return as_images(images)

    # -------------------------------------------------------------- real statistics and cache

    def _cache_key(self, real_images: np.ndarray) -> str:
        fields = {
            "format": CACHE_FORMAT,
            "classifier_sha256": self.classifier.sha256,
            "data_sha256": hashlib.sha256(np.ascontiguousarray(real_images).tobytes()).hexdigest(),
            "num_real": len(real_images),
            "precision_k": self.precision_k,
            "density_k": self.density_k,
            "train_sha256": (None if self.train_images is None
                             else hashlib.sha256(np.ascontiguousarray(self.train_images).tobytes()).hexdigest()),
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]

    def _load_cached(self) -> RealStats | None:
        if not self.cache_path.is_file():
            return None
        try:
            with np.load(self.cache_path, allow_pickle=False) as archive:
                stats = RealStats(**{name: archive[name] for name in RealStats.__dataclass_fields__})
        except Exception:  # truncated (BadZipFile, EOFError), damaged or an older layout: a cache miss
            return None  # recomputed and replaced
        if not self._well_shaped(stats):  # readable but not for this classifier and reference set: a miss too
            return None
        self.cache_hit = True
        return stats

    def _well_shaped(self, stats: RealStats) -> bool:
        """Do the cached arrays have the shapes this classifier and reference set give?"""
        n, d, c = self.num_real, self.classifier.feature_dim, NUM_CLASSES
        num_train = 0 if self.train_images is None else len(self.train_images)
        expected = {"features": (n, d), "mu": (d,), "sigma": (d, d), "logits_mu": (c,), "logits_sigma": (c, c),
                    "radii_precision": (n,), "radii_density": (n,), "class_counts": (c,), "class_mu": (c, d),
                    "class_sigma": (c, d, d), "train_features": (num_train, d), "test_nearest": (n if num_train else 0,)}
        return all(getattr(stats, name).shape == shape for name, shape in expected.items())

    def _computed_once(self, real_images: np.ndarray) -> RealStats:
        """The statistics, under the cache file's lock: read from the file when another process wrote it
        while this one waited, computed and cached otherwise. Where no lock can be had (a cache folder that
        cannot be written, a disk without locks) they are computed as if there were none."""
        try:
            lock = filelock.open_lock_file(self.cache_path.parent, f"{self.cache_path.stem}.lock")
        except OSError:
            return self._compute_and_cache(real_images)  # and its write warns that nothing could be cached
        with lock:  # closing the file releases the lock
            try:
                if not filelock.flock(lock, exclusive_now=True):
                    log.info("another process is computing the real statistics for %s; waiting for it", self.cache_path)
                    filelock.flock(lock)
            except InputError:
                return self._compute_and_cache(real_images)
            return self._load_cached() or self._compute_and_cache(real_images)

    def _compute_and_cache(self, real_images: np.ndarray) -> RealStats:
        features, logits = self.classifier.features_and_logits(to_unit_range(real_images))
        features, logits = features.astype(np.float64), logits.astype(np.float64)
        mu, sigma = metrics.gaussian_stats(features)
        logits_mu, logits_sigma = metrics.gaussian_stats(logits)
        class_counts, class_mu, class_sigma = metrics.class_stats(features, logits.argmax(axis=1), NUM_CLASSES)
        if self.train_images is None:
            train_features, test_nearest = np.zeros((0, features.shape[1]), np.float32), np.zeros(0)
        else:
            train_features = self.classifier.features_and_logits(to_unit_range(self.train_images))[0].astype(np.float32)
            test_nearest = metrics.nearest_neighbours(features, train_features)[0]
        stats = RealStats(
            features=features,
            mu=mu,
            sigma=sigma,
            logits_mu=logits_mu,
            logits_sigma=logits_sigma,
            radii_precision=metrics.knn_radii(features, self.precision_k),
            radii_density=metrics.knn_radii(features, self.density_k),
            class_counts=class_counts,
            class_mu=class_mu,
            class_sigma=class_sigma,
            train_features=train_features,
            test_nearest=test_nearest,
        )
        self._write_cache(stats)
        return stats

    def _write_cache(self, stats: RealStats) -> None:
        # Write to a temporary file and rename it, so a concurrent job never reads half a file.
        partial = None
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.cache_path.parent, suffix=".tmp", delete=False) as tmp:
                partial = Path(tmp.name)
                np.savez(tmp, **vars(stats))
            os.replace(partial, self.cache_path)
        except OSError as error:
            if partial is not None:
                partial.unlink(missing_ok=True)
            warnings.warn(f"could not cache real statistics in {self.cache_path} ({error})", stacklevel=3)


def in_registry_order(found: dict[str, float]) -> dict[str, float]:
    """`found` ({name: value}) in the registry's order; ValueError unless it names exactly its scores."""
    if set(found) != set(scores.SCORE_NAMES):
        missing, extra = set(scores.SCORE_NAMES) - set(found), set(found) - set(scores.SCORE_NAMES)
        raise ValueError(f"an evaluation must give every registry score once: missing {sorted(missing)}, "
                         f"not in the registry {sorted(extra)}.")
    return {name: found[name] for name in scores.SCORE_NAMES}


def _check_real_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise InputError(
            f"real reference images have shape {images.shape} and dtype {images.dtype}; expected "
            f"uint8 (N, {IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]}) grey levels, as Dataset.x_test holds them."
        )
    return images


class _Clock:
    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
