"""The pictures: each is a real PNG, and the grid puts every image where it belongs."""

from __future__ import annotations

import numpy as np
import pytest

from scipy import stats

from ganlab import plots, sweep_report

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
