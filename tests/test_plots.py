"""The pictures: each is a real PNG, and the grid puts every image where it belongs."""

from __future__ import annotations

import numpy as np
import pytest

from scipy import stats

from ganlab.sweeps import comparison
from ganlab.core import plots
from ganlab.sweeps import summary as sweep_report
from ganlab.core.record import Observation

PNG = b"\x89PNG\r\n\x1a\n"


def test_image_grid_tiles_images_in_rows():
    images = np.full((100, 784), -1.0, np.float32)
    images[13] = 1.0  # row 1, column 3 of a 10x10 grid
    grid = plots.image_grid(images)
    assert grid.shape == (280, 280)
    assert grid[28:56, 84:112].min() == 1.0 and grid[:28, :].max() == 0.0


def test_image_grid_takes_every_generator_layout():
    images = np.random.default_rng(0).uniform(-1, 1, (30, 784)).astype(np.float32)
    expected = plots.image_grid(images, rows=5)
    assert expected.shape == (5 * 28, 6 * 28)
    for layout in ((30, 28, 28), (30, 28, 28, 1)):
        np.testing.assert_array_equal(plots.image_grid(images.reshape(layout), rows=5), expected)
    with pytest.raises(ValueError, match=r"expected \(N, 784\), \(N, 28, 28\) or \(N, 28, 28, 1\)"):
        plots.image_grid(images.reshape(30, 392, 2))


def test_every_picture_is_a_png(tmp_path):
    files = [
        plots.save_sample_grid(np.zeros((100, 784)), tmp_path / "grid.png", title="epoch 1"),
        plots.save_loss_curve(np.linspace(1, 0.5, 40), np.linspace(0.7, 1.2, 40), 20, tmp_path / "loss.png"),
        plots.save_class_histogram(np.arange(10), tmp_path / "classes" / "hist.png"),
        plots.save_sweep_heatmap(
            [{"a": "0.1", "b": "0.0", "fid": 3.0}, {"a": "0.3", "b": "0.0", "fid": 2.0}, {"a": "0.1", "b": "0.2", "fid": 1.0}],
            "a", "b", "fid", tmp_path / "heat.png"),
    ]
    files.append(plots.save_montage(files[:2], ["first", "second"], tmp_path / "montage.png"))
    for file in files:
        assert file.read_bytes()[:8] == PNG, file


def test_heatmap_cells_are_means_over_seeds_with_their_interval(tmp_path):
    seeds = {("0.0", "0.1"): [50.0, 54.0, 61.0], ("0.3", "0.1"): [40.0]}
    rows = [{"dropout": d, "label_smoothing": ls, "seed": str(seed), "fid": value}
            for (d, ls), values in seeds.items() for seed, value in enumerate(values)]
    rows.append({"dropout": "0.3", "label_smoothing": "0.1", "seed": "1", "fid": float("nan")})  # a failed job
    cells = {(cell["dropout"], cell["label_smoothing"]): cell
             for cell in sweep_report.cell_means(rows, ["dropout", "label_smoothing"], "fid")}
    three = cells[("0.0", "0.1")]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(seeds[("0.0", "0.1")]), scale=stats.sem(seeds[("0.0", "0.1")]))
    assert three["n"] == 3 and three["fid"] == np.mean(seeds[("0.0", "0.1")])
    assert three["half_width"] == pytest.approx((high - low) / 2)
    one = cells[("0.3", "0.1")]
    assert one["n"] == 1 and one["fid"] == 40.0 and np.isnan(one["half_width"])
    path = plots.save_sweep_heatmap(list(cells.values()), "dropout", "label_smoothing", "fid", tmp_path / "heat.png")
    assert path.read_bytes()[:8] == PNG


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions save, drawn, in the order they were saved."""
    figures = []
    save = plots._save

    def keep(fig, path, **options):
        if options.get("tight", True):
            fig.tight_layout()  # as _save lays it out
        fig.canvas.draw()
        figures.append({"title": [ax.get_title() for ax in fig.axes], "axes": fig.axes, "figure": fig,
                        "past_edges": past_the_edges(fig),
                        "legend": [[text.get_text() for text in ax.get_legend().get_texts()] if ax.get_legend() else []
                                   for ax in fig.axes],
                        "legend_alpha": [[handle.get_alpha() for handle in ax.get_legend().legend_handles]
                                         if ax.get_legend() else [] for ax in fig.axes],
                        "xticks": [list(ax.get_xticks()) for ax in fig.axes],
                        "texts": [[text.get_text() for text in ax.texts] for ax in fig.axes],
                        "ylabel": [ax.get_ylabel() for ax in fig.axes],
                        "collections": [[len(path.vertices) for c in ax.collections for path in c.get_paths()]
                                        for ax in fig.axes]})
        return save(fig, path, **options)

    monkeypatch.setattr(plots, "_save", keep)
    monkeypatch.setattr(comparison, "_save", keep)
    return figures


def whole(ticks) -> bool:
    return all(float(tick).is_integer() for tick in ticks)


@pytest.mark.parametrize("steps_per_epoch", [20, 40])  # two epochs, one
def test_loss_curve_names_every_line_and_ticks_whole_epochs(tmp_path, drawn, steps_per_epoch):
    plots.save_loss_curve(np.linspace(1, 0.5, 40), np.linspace(0.7, 1.2, 40), steps_per_epoch, tmp_path / "loss.png",
                          title="dropout=0.1: losses")
    (figure,) = drawn
    assert figure["legend"] == [["D per step", "D epoch mean", "G per step", "G epoch mean"]]
    assert figure["legend_alpha"] == [[1.0] * 4]  # the faint per-step lines are legible in the legend
    assert figure["title"] == ["dropout=0.1: losses"]
    assert whole(figure["xticks"][0])


def test_sample_grid_carries_its_title(tmp_path, drawn):
    plots.save_sample_grid(np.zeros((100, 784)), tmp_path / "samples.png", title="dropout=0.1: epoch 5")
    assert drawn[0]["title"] == ["dropout=0.1: epoch 5"]


def past_the_edges(figure) -> list[str]:
    """The texts of a drawn figure that reach past its left or right edge (none, for a title that fits)."""
    box = figure.bbox
    texts = [*figure.texts, *(ax.title for ax in figure.axes)]
    return [text.get_text() for text in texts if text.get_text() and not (
        box.x0 <= text.get_window_extent().x0 and text.get_window_extent().x1 <= box.x1 + 0.5)]


LONG_NAME = "dropout=0.5 lr=0.001 beta_1=0.9 +3"  # a run name as long as ganlab makes them (40 characters)


def test_long_titles_fit_their_pictures_broken_between_phrases(tmp_path, drawn):
    grid = plots.save_sample_grid(np.zeros((100, 784)), tmp_path / "grid.png", title=f"{LONG_NAME}, epoch 12")
    plots.save_nearest_pairs(np.zeros((8, 784)), np.zeros((8, 784)), tmp_path / "nearest.png",
                             title=f"{LONG_NAME}, epoch 12")
    plots.save_class_histogram(np.arange(10), tmp_path / "classes.png", title=f"{LONG_NAME}, epoch 12")
    # the report's per-group picture of one run: once cut at both edges
    plots.save_montage([grid], [""], tmp_path / "report.png", title=f"loss=wgan_gp: samples of run {LONG_NAME}")
    plots.save_labelled_montage([grid] * 2, ["a", "b"], tmp_path / "sweep.png",
                                title="final samples (epoch 10) · best first by fid (lower is better)")
    assert len(drawn) == 5
    for figure in drawn:
        assert figure["past_edges"] == [], figure["figure"]
    assert drawn[0]["title"] == [f"{LONG_NAME},\nepoch 12"]  # between phrases, not inside one
    assert drawn[3]["figure"].texts[0].get_text().startswith("loss=wgan_gp:\nsamples of run")


def test_fit_lines_breaks_between_phrases_then_words_never_inside_a_word():
    assert plots.fit_lines("short", 10) == ["short"]
    assert plots.fit_lines("final samples · best first by fid", 20) == ["final samples ·", "best first by fid"]
    assert plots.fit_lines("aaaa bbbb cccc", 9) == ["aaaa bbbb", "cccc"]
    assert plots.fit_lines("averyveryverylongword x", 5) == ["averyveryverylongword", "x"]


def test_every_picture_is_black_on_white_the_sweep_montage_too(tmp_path):
    from PIL import Image

    grid = plots.save_sample_grid(np.full((100, 784), -1.0), tmp_path / "grid.png", title="a, epoch 1")  # blank digits
    bare = tmp_path / "bare.png"  # a bare grid as older runs logged it: white digits on black
    Image.fromarray(np.zeros((280, 280), np.uint8)).save(bare)
    montage = plots.save_labelled_montage([grid, bare], ["a", "b"], tmp_path / "montage.png", title="t")
    for picture in (grid, montage):
        with Image.open(picture) as image:
            assert np.asarray(image.convert("L")).mean() > 240, picture  # white, a few dark letters


@pytest.mark.parametrize("count", [2, 4, 9])
def test_a_sweep_montage_is_never_taller_than_a_window_shows_it_whole(tmp_path, count):
    from PIL import Image

    grid = plots.save_sample_grid(np.zeros((100, 784)), tmp_path / "grid.png", title="a, epoch 1")
    montage = plots.save_labelled_montage([grid] * count, ["a"] * count, tmp_path / "montage.png",
                                          title="final samples (epoch 2) · best first by fid (lower is better)")
    with Image.open(montage) as image:
        assert image.height <= plots.MONTAGE_ASPECT * image.width, image.size
        assert image.width <= 6 * 700  # at most six tiles of a grid's own size a row


def one_value_per_group(epochs):
    return [Observation({"dropout": dropout}, "0", "fid", epoch, 100.0 - epoch + float(dropout))
            for dropout in ("0.1", "0.3") for epoch in epochs]


@pytest.mark.parametrize("epochs", [(5,), (1, 2, 3, 4, 5)])
def test_a_one_seed_comparison_plot_promises_no_band_and_ticks_whole_epochs(tmp_path, drawn, epochs):
    rows = comparison.compare(one_value_per_group(epochs), by=["dropout"], reference={"dropout": "0.3"})
    comparison.plot_metric(rows, "fid", tmp_path / "fid.png")
    (figure,) = drawn
    assert figure["title"] == ["fid: one seed per group, so no confidence interval"]
    assert all(vertices == 0 for vertices in figure["collections"][0])  # no band drawn
    assert whole(figure["xticks"][0]), figure["xticks"]


def test_a_comparison_plot_with_seeds_draws_the_band(tmp_path, drawn):
    values = [Observation({"dropout": dropout}, str(seed), "fid", epoch, 100.0 - epoch + seed + float(dropout))
              for dropout in ("0.1", "0.3") for seed in (0, 1, 2) for epoch in (1, 2)]
    comparison.plot_metric(comparison.compare(values, by=["dropout"], reference={"dropout": "0.3"}), "fid",
                           tmp_path / "fid.png")
    (figure,) = drawn
    assert figure["title"] == ["fid: mean and 95% CI of the mean over seeds"]
    assert any(vertices > 0 for vertices in figure["collections"][0])


def test_heatmap_keeps_the_metrics_digits_and_says_which_way_is_better(tmp_path, drawn):
    rows = [{"dropout": "0.1", "ls": "0", "fid": 323.17, "n": 3, "half_width": 12.345},
            {"dropout": "0.3", "ls": "0", "fid": 57.06, "n": 3, "half_width": 4.4}]
    plots.save_sweep_heatmap(rows, "dropout", "ls", "fid", tmp_path / "heat.png")
    (figure,) = drawn
    heatmap, colorbar = figure["axes"]
    assert figure["texts"][0] == ["323.2\n± 12.35", "57.1\n± 4.4"]  # the grid's decimals: those of its largest
    assert figure["title"][0] == "final fid: mean ± 95% CI over 3 runs, lower is better"
    assert figure["ylabel"][1] == "fid (lower is better)"
