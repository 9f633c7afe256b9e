"""Issue 23's scores on closed-form and constructed cases: repeated draws, memorization,
per-class FID, D's overfitting gap, the real-statistics cache, and refusing unlike runs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ganlab.evaluation import classifier as clf
from ganlab.sweeps import comparison
from ganlab.training import epochs
from ganlab.evaluation import metrics
from ganlab.core import scores
from ganlab.sweeps import seed_stats
from ganlab.sweeps import summary as sweep_report
from ganlab.core.data import load_dataset, to_unit_range
from ganlab.core.errors import InputError
from ganlab.evaluation.evaluator import MEMORIZATION_QUANTILE, Evaluator, evaluation_noise, evaluation_noises

from conftest import FIXTURE_MNIST as FIXTURE
from conftest import QUICK, all_runs, new_store, run_cli

FAST_KID = {"kid_subsets": 5, "kid_subset_size": 200}


@pytest.fixture(scope="module")
def small_mnist():
    return load_dataset("mnist", str(FIXTURE))


@pytest.fixture(scope="module")
def evaluator(small_mnist, tmp_path_factory):
    return Evaluator.from_dataset(small_mnist, classifier=clf.load(), cache_dir=tmp_path_factory.mktemp("cache"), **FAST_KID)


# ---------------------------------------------------------------------------- closed forms


def test_nearest_neighbours_finds_the_exact_match():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((500, 16))
    chosen = rng.choice(500, 40, replace=False)
    distances, indices = metrics.nearest_neighbours(reference[chosen] + 1e-9, reference)
    assert np.array_equal(indices, chosen) and np.all(distances < 1e-6)
    point = np.zeros((1, 16))
    distance, index = metrics.nearest_neighbours(point, reference)
    assert index[0] == np.argmin(np.linalg.norm(reference, axis=1))
    assert distance[0] == pytest.approx(np.linalg.norm(reference, axis=1).min())


def test_memorization_is_the_share_below_the_threshold():
    assert metrics.memorization([0.0, 0.5, 1.0, 2.0], threshold=1.0) == 0.5  # strictly below
    assert metrics.memorization_threshold(np.arange(101.0), 0.01) == pytest.approx(1.0)


def test_mean_and_spread_keeps_a_single_draw_bit_for_bit():
    value = 0.1 + 0.2  # not exactly representable: a mean over one draw must not round it
    mean, spread = metrics.mean_and_spread([value])
    assert mean == value and math.isnan(spread)
    assert metrics.mean_and_spread([1.0, 2.0, 3.0]) == (2.0, 1.0)


def test_draws_of_which_one_is_infinite_have_no_spread_and_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "invalid value" on inf - inf would reach the console
        mean, spread = metrics.mean_and_spread([3.0, math.inf])
    assert mean == math.inf and math.isnan(spread)


def test_per_class_fid_finds_the_class_drawn_worst():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 400)
    real = rng.standard_normal((1200, 4)) + labels[:, None]
    fake = rng.standard_normal((1200, 4)) + labels[:, None]
    fake[labels == 2] += 3.0  # class 2 is shifted by 3 in every one of 4 dimensions: FID about 36
    _, real_mu, real_sigma = metrics.class_stats(real, labels, 3)
    distances = metrics.class_frechet_distances(real_mu, real_sigma, fake, labels)
    assert distances[0] < 0.2 and distances[1] < 0.2
    assert distances[2] == pytest.approx(36, rel=0.1)
    assert metrics.worst(distances) == distances[2]
    few = metrics.class_frechet_distances(real_mu, real_sigma, fake[:404], labels[:404])  # 4 of class 1, none of 2
    assert few[1] == few[2] == math.inf and np.isfinite(few[0])  # missing or under-sampled: the worst, never dropped
    assert metrics.worst(few) == math.inf
    _, thin_mu, thin_sigma = metrics.class_stats(real[:404], labels[:404], 3)  # the reference itself lacks classes 1, 2
    unscorable = metrics.class_frechet_distances(thin_mu, thin_sigma, fake, labels)
    assert np.isnan(unscorable[1]) and np.isnan(unscorable[2]) and metrics.worst(unscorable) == unscorable[0]


def test_a_collapsed_generator_scores_worse_per_class_than_a_uniformly_mediocre_one():
    """Two clean classes and nothing else must not beat ten classes each drawn a little off."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(10), 300)
    real = rng.standard_normal((3000, 4)) + 3 * labels[:, None]
    _, real_mu, real_sigma = metrics.class_stats(real, labels, 10)
    collapsed_labels = labels[labels < 2]
    collapsed = rng.standard_normal((len(collapsed_labels), 4)) + 3 * collapsed_labels[:, None]  # perfect, 2 classes
    mediocre = rng.standard_normal((3000, 4)) + 3 * labels[:, None] + 0.5  # every class, shifted
    collapsed_fid = metrics.class_frechet_distances(real_mu, real_sigma, collapsed, collapsed_labels)
    mediocre_fid = metrics.class_frechet_distances(real_mu, real_sigma, mediocre, labels)
    assert np.all(collapsed_fid[:2] < mediocre_fid[:2])  # the two classes it keeps are the better ones
    assert metrics.worst(collapsed_fid) > metrics.worst(mediocre_fid) and np.isfinite(metrics.worst(mediocre_fid))


def test_variance_split_attributes_the_variance():
    # four runs, values 10, 12, 14, 16: variance 6.667; each run's 4 draws spread by 2: sampling 2^2 / 4 = 1
    split = seed_stats.variance_split("g", scores.FID, [10, 12, 14, 16], [2, 2, 2, 2], repeats=4)
    assert split.total == pytest.approx(20 / 3) and split.sampling == pytest.approx(1.0)
    assert split.training == pytest.approx(20 / 3 - 1) and split.dominant.startswith("training")
    noisy = seed_stats.variance_split("g", scores.FID, [10, 11], [4, 4], repeats=2)  # sampling 8 > total 0.5
    assert noisy.training == 0.0 and noisy.dominant.startswith("sampling")
    assert "dominates" in comparison.variance_markdown([split, noisy])


# ---------------------------------------------------------------------------- repeats


class FakeRun:
    def __init__(self):
        self.tags, self.images, self.artifacts = {}, [], []

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, path, folder=None):
        self.artifacts.append((Path(path), folder))

    def log_image(self, image, key, step):
        self.images.append((key, step))


class MeanEvaluator:
    """Scores a draw by its mean pixel (as fid): a score whose spread over draws is known in closed form."""

    def evaluate(self, images):
        found = dict.fromkeys(scores.SCORE_NAMES, 0.0)
        found[scores.FID] = float(np.mean(images, dtype=np.float64))
        return SimpleNamespace(scores=found, histogram=np.ones(10), class_fid=None, class_counts=None,
                               nearest_pairs=None, nearest_distances=None)

    def scoring_tags(self):
        return {"eval.reference": "test"}


class NoiseGenerator:
    """A fixed generator: its images are its noise."""
    ema = None

    def generate(self, noise, ema=False):
        return np.asarray(noise)


def test_the_first_draw_is_the_single_draw_of_before():
    draws = evaluation_noises(7, 300, 100, repeats=3)
    assert np.array_equal(draws[0], evaluation_noise(7, 300, 100))
    assert not np.array_equal(draws[1], draws[0]) and not np.array_equal(draws[2], draws[1])
    assert all(np.array_equal(a, b) for a, b in zip(draws, evaluation_noises(7, 300, 100, repeats=3)))  # reproducible


def test_repeats_of_a_fixed_generator_give_the_expected_spread(tmp_path):
    n, dim, repeats = 50, 784, 40  # noise of 784 numbers: the generator returns it as a 28x28 image
    run = FakeRun()
    scoring = epochs.EpochScoring(MeanEvaluator(), evaluation_noises(3, n, dim, repeats), run, tmp_path, dim)
    found = scoring(NoiseGenerator(), 1)
    # the mean of n*dim standard normals has standard deviation 1/sqrt(n*dim): 0.00707
    expected = 1 / math.sqrt(n * dim)
    assert found[scores.sampling_std(scores.FID)] == pytest.approx(expected, rel=0.3)
    assert abs(found[scores.FID]) < 4 * expected / math.sqrt(repeats)
    assert run.tags["eval.repeats"] == str(repeats)
    single = epochs.EpochScoring(MeanEvaluator(), evaluation_noises(3, n, dim, 1), FakeRun(), tmp_path, dim)(NoiseGenerator(), 1)
    assert single[scores.FID] == float(np.mean(evaluation_noise(3, n, dim), dtype=np.float64))  # bit for bit
    assert scores.sampling_std(scores.FID) not in single


# ---------------------------------------------------------------------------- memorization and per-class FID


def test_training_images_score_full_memorization_and_test_images_almost_none(evaluator, small_mnist):
    copies = evaluator.evaluate(to_unit_range(small_mnist.x_train[:1000]))
    assert copies.scores[scores.MEMORIZATION] == 1.0
    assert np.all(copies.nearest_distances < 1e-3)  # the picture pairs each copy with itself
    assert np.allclose(copies.nearest_pairs[0], copies.nearest_pairs[1], atol=1e-6)
    unseen = evaluator.evaluate(to_unit_range(small_mnist.x_test[:1000]))
    assert unseen.scores[scores.MEMORIZATION] <= 3 * MEMORIZATION_QUANTILE


def test_collapse_onto_two_real_digits_scores_worse_than_all_ten_noisy(evaluator, small_mnist):
    """Through the evaluator, on real digits: test images of 0 and 1 only (clean, collapsed) against
    all test images with noise added (mediocre): the collapsed set's fid_class_worst is the worse."""
    images = to_unit_range(small_mnist.x_test)
    collapsed = evaluator.evaluate(images[small_mnist.y_test < 2])
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 0.3, images.shape).astype(np.float32), -1, 1)
    mediocre = evaluator.evaluate(noisy)
    assert collapsed.scores[scores.MODES_COVERED] <= 3 and mediocre.scores[scores.MODES_COVERED] == 10
    assert collapsed.scores[scores.FID_CLASS_WORST] == math.inf
    assert math.isfinite(mediocre.scores[scores.FID_CLASS_WORST])
    # the registry's own comparison (what a sweep's best job and objective_at=best use) prefers the mediocre one
    assert scores.is_better(scores.FID_CLASS_WORST, mediocre.scores[scores.FID_CLASS_WORST],
                            collapsed.scores[scores.FID_CLASS_WORST])


def test_new_scores_are_in_the_evaluation_by_name(evaluator, small_mnist):
    result = evaluator.evaluate(to_unit_range(small_mnist.x_test))
    for name in (scores.MEMORIZATION, scores.FID_CLASS_WORST):
        assert name in result.scores and scores.lookup(name) is not None
    assert result.class_fid.shape == (10,) and result.class_counts.sum() == len(small_mnist.x_test)
    assert result.scores[scores.FID_CLASS_WORST] == np.nanmax(result.class_fid)
    for name in scores.DIAGNOSTIC_NAMES:
        assert scores.lookup(name).meaning and name in scores.markdown_table()


def test_epoch_scoring_writes_the_table_and_the_picture(evaluator, small_mnist, tmp_path):
    run = FakeRun()

    class CopyingGenerator:
        ema = None

        def generate(self, noise):
            return to_unit_range(small_mnist.x_train[: len(noise)])

    scoring = epochs.EpochScoring(evaluator, evaluation_noise(0, 600, 100), run, tmp_path, 100)
    found = scoring(CopyingGenerator(), 3)
    assert found[scores.MEMORIZATION] == 1.0
    assert (tmp_path / epochs.CLASS_FID_DIR / "epoch_003.csv").read_text().startswith("class,generated,fid")
    assert (tmp_path / epochs.NEAREST_KEY / "epoch_003.png").is_file()
    assert (epochs.NEAREST_KEY, 3) in run.images
    assert run.tags["eval.reference"] == "test" and run.tags["eval.classifier_sha256"] == evaluator.classifier.sha256


# ---------------------------------------------------------------------------- D's overfitting


class LookupD:
    """A D that memorized its training images: logit +10 on them, -10 on anything else."""

    def __init__(self, train_images):
        self.known = {image.tobytes() for image in train_images}

    def __call__(self, images, training=False):
        assert not training
        pixels = np.round(np.asarray(images) * 127.5 + 127.5).astype(np.uint8)
        return np.array([[10.0 if image.tobytes() in self.known else -10.0] for image in pixels])


def test_a_memorizing_discriminator_shows_the_gap(small_mnist):
    from ganlab.gan.losses import NonSaturating

    train, test = epochs.d_gap_images(small_mnist.x_train, small_mnist.x_test, seed=0, size=500)
    assert len(train) == len(test) == 500
    loss = SimpleNamespace(d_output=lambda logits: 1 / (1 + np.exp(-np.asarray(logits))))  # ns: a probability
    memorizing = SimpleNamespace(discriminator=LookupD(small_mnist.x_train.reshape(-1, 784)), loss=loss, image_shape=(784,))
    found = epochs.discriminator_gap(memorizing, train, test)
    assert found[scores.D_REAL_TRAIN] > 0.99 and found[scores.D_REAL_TEST] < 0.01 and found[scores.D_GAP] > 0.98
    fair = SimpleNamespace(discriminator=lambda images, training=False: np.full((len(images), 1), 0.7),
                           loss=SimpleNamespace(d_output=lambda logits: logits), image_shape=(784,))
    assert epochs.discriminator_gap(fair, train, test)[scores.D_GAP] == 0.0
    assert hasattr(NonSaturating, "d_output")


# ---------------------------------------------------------------------------- the cache


def test_a_well_formed_cache_with_wrong_shapes_is_rebuilt(small_mnist, tmp_path):
    model = clf.load()
    first = Evaluator(small_mnist.x_test[:500], classifier=model, cache_dir=tmp_path, **FAST_KID)
    with np.load(first.cache_path) as archive:
        arrays = dict(archive)
    arrays["features"] = arrays["features"][:, :7]  # readable, but not this classifier's features
    arrays["radii_density"] = arrays["radii_density"][:10]
    with open(first.cache_path, "wb") as stream:
        np.savez(stream, **arrays)
    again = Evaluator(small_mnist.x_test[:500], classifier=model, cache_dir=tmp_path, **FAST_KID)
    assert not again.cache_hit and again.real.features.shape == (500, model.feature_dim)
    assert again.score(to_unit_range(small_mnist.x_train[:300]))[scores.FID] > 0
    assert Evaluator(small_mnist.x_test[:500], classifier=model, cache_dir=tmp_path, **FAST_KID).cache_hit  # repaired


# ---------------------------------------------------------------------------- unlike runs


def fake_run(params, tags=None):
    return SimpleNamespace(data=SimpleNamespace(params=params, tags=tags or {}, metrics={}))


def test_runs_scored_differently_are_named():
    runs = [fake_run({"dropout": d, "eval.num_samples": n}) for d in ("0.1", "0.5") for n in ("500", "1000")]
    line = sweep_report.scoring_difference(runs, ["dropout"])
    assert "eval.num_samples" in line and "\n" not in line
    assert sweep_report.scoring_difference(runs, ["dropout", "eval.num_samples"]) is None
    with pytest.raises(InputError, match="num_samples"):
        sweep_report.check_alike_scoring(runs, ["dropout"])
    classifiers = [fake_run({"seed": s}, {"eval.classifier_sha256": sha}) for s, sha in (("0", "aa"), ("1", "bb"))]
    assert "eval.classifier_sha256" in sweep_report.scoring_difference(classifiers, [])
    older = [fake_run({"eval.num_samples": "500"}), fake_run({"eval.num_samples": "500", "eval.repeats": "1"})]
    assert sweep_report.scoring_difference(older, []) is None  # a run from before repeats counts as 1


def test_a_scored_job_records_how_it_was_scored_and_its_memorization_and_d_gap(dropout_sweep):
    """What the report's and the summary's check of like scoring reads, as the shared sweep's real jobs logged it."""
    for run in dropout_sweep.children:
        assert run.data.params["eval.num_samples"] == "300" and run.data.params.get("eval.repeats") == "1"
        assert run.data.tags.get("eval.reference") == "test"
        assert scores.D_GAP in run.data.metrics and scores.MEMORIZATION in run.data.metrics


def test_report_refuses_mixed_sample_counts(tmp_path, capsys):
    """Two runs at one dropout, scored with 300 and with 400 samples (a store written here, as jobs record it): the
    report by dropout alone is refused (in-process), by both it compares them (the real CLI)."""
    from mlflow.tracking import MlflowClient

    from ganlab import report

    uri = new_store(tmp_path / "mlruns" / "mlflow.db")
    client = MlflowClient(uri)
    experiment = client.create_experiment("ganlab", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment, tags={"sweep.parent": "true"}).info.run_id
    for job, samples in enumerate((300, 400)):
        run = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "sweep.job_num": str(job),
                                                  "eval.reference": "test"}).info.run_id
        for key, value in {"dropout": 0.1, "seed": 10, "eval.num_samples": samples, "eval.repeats": 1}.items():
            client.log_param(run, key, value)
        client.log_metric(run, scores.FID, 300.0 + job, step=1)
        client.set_terminated(run)
    client.set_terminated(parent)
    assert report.main(["--tracking-uri", uri, "--by", "dropout", "--epochs", "1", "--out", str(tmp_path / "r1")]) == 2
    refused = capsys.readouterr().err
    assert "num_samples" in refused and len(refused.strip().splitlines()) == 1
    grouped = run_cli(["--by", "dropout,eval.num_samples", "--epochs", "1", "--out", "r2"], tmp_path, module="ganlab.report")
    assert grouped.returncode == 0, grouped.stderr[-3000:]
    assert (tmp_path / "r2" / "comparison.csv").is_file()


class NoArtifacts:
    """A client without artifacts: the sweep summary leaves its montage out."""

    def download_artifacts(self, run_id, path, folder):
        raise OSError("no artifacts here")

    def get_metric_history(self, run_id, key):
        return []  # nor histories: the summary draws no per-epoch curves


def child(run_id, params, metrics=None, tags=None):
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, status="FINISHED", experiment_id="1"),
                           data=SimpleNamespace(params=params, tags=tags or {}, metrics=metrics or {}))


def test_sweep_summary_skips_the_comparison_of_unlike_runs(tmp_path):
    children = [child(f"r{seed}{n}", {"dropout": "0.3", "seed": str(seed), "eval.num_samples": n}, {scores.FID: 50.0 + seed})
                for seed in (0, 1) for n in ("500", "1000")]
    summary = sweep_report.summarize(NoArtifacts(), children, ["dropout", "seed"], scores.FID, tmp_path)
    assert "not compared: runs scored differently: eval.num_samples differs" in summary.description
    assert not (tmp_path / "comparison.csv").exists()


def test_sweep_summary_splits_the_variance_where_runs_repeated_their_draws(tmp_path):
    children = [child(f"{d}{seed}", {"dropout": d, "seed": str(seed), "eval.repeats": "4"},
                      {scores.FID: value, scores.sampling_std(scores.FID): 2.0})
                for d, values in (("0.1", (10, 12, 14, 16)), ("0.5", (10, 10.5, 11, 10.2))) for seed, value in enumerate(values)]
    summary = sweep_report.summarize(NoArtifacts(), children, ["dropout"], scores.FID, tmp_path)
    text = (tmp_path / "variance_split.md").read_text()
    assert "training (between seeds)" in text and "sampling (within runs)" in text
    assert "dropout=0.1: fid variance between runs 6.667, of which sampling 1" in summary.description
    assert (tmp_path / sweep_report.VARIANCE).read_text().startswith("group,metric,runs,repeats")


def test_evaluate_run_id_reproduces_a_score_logged_over_repeated_draws(workdir, capsys):
    """A run trained with eval.repeats=2 logs fid as the mean of two draws; `ganlab.evaluate --run-id`
    re-scores it with the run's two draws, so rescore_fid is the logged fid (and its spread)."""
    from ganlab import evaluate

    quick = [arg for arg in QUICK if not arg.startswith("data.path=")]
    trained = run_cli([*quick, f"data.path={FIXTURE}", "eval.repeats=2"], workdir)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = all_runs(workdir)
    uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    assert evaluate.main(["--run-id", run.info.run_id, "--tracking-uri", uri]) == 0  # the run's own data.path
    assert "x 2 draws (eval.repeats), mean" in capsys.readouterr().out
    (rescored,) = all_runs(workdir)
    logged = again = rescored.data.metrics
    assert logged[scores.sampling_std(scores.FID)] > 0  # the two draws differ: one draw would not reproduce the mean
    for name in (scores.FID, scores.PRECISION, scores.MODES_COVERED):
        assert again[scores.rescore(name)] == pytest.approx(logged[name], rel=1e-9, abs=1e-12), name
    # The spread is a difference of two close draws: its error is theirs (the last bits of a matrix
    # product differ with the threads a process runs on), not relative to itself.
    spread = scores.sampling_std(scores.FID)
    assert again[scores.rescore(spread)] == pytest.approx(logged[spread], abs=1e-9 * logged[scores.FID]), spread


def test_eval_repeats_is_checked():
    from test_config import compose_train

    from ganlab.core import config

    assert compose_train().eval.repeats == 1
    config.validate(compose_train(["eval.repeats=3"]))
    with pytest.raises(InputError, match="eval.repeats"):
        config.validate(compose_train(["eval.repeats=0"]))
