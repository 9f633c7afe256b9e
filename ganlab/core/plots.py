"""Pictures of a run: sample grids, loss curves, sweep heatmaps and montages.

Everything here takes plain NumPy arrays or numbers and writes a PNG; nothing here
knows about TensorFlow or MLflow. Images come in any of `ganlab.core.data.IMAGE_LAYOUTS`
((N, 784), (N, 28, 28) or (N, 28, 28, 1)), in [-1, 1].
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ganlab.core import scores  # noqa: E402
from ganlab.core.data import as_images  # noqa: E402
from ganlab.core.scores import D_LOSS, G_LOSS  # noqa: E402


def epoch_ticks(ax, epochs) -> None:
    """Ticks of an epoch x axis at whole epochs only (never 4.8, 5.2): at each of a few epochs
    (a single one included), else wherever matplotlib puts integer ticks."""
    epochs = sorted({int(epoch) for epoch in epochs})
    if len(epochs) <= 12:
        ax.set_xticks(epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def image_grid(images: np.ndarray, rows: int = 10) -> np.ndarray:
    """Tile images in [-1, 1] (any of data.IMAGE_LAYOUTS) into one 2-D array in [0, 1] of `rows` rows."""
    images = as_images(np.asarray(images, dtype=np.float32))
    height, width = images.shape[1:]
    columns = int(np.ceil(len(images) / rows))
    canvas = np.zeros((rows * height, columns * width), dtype=np.float32)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        canvas[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return (canvas + 1.0) / 2.0


def save_sample_grid(images: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """A 10x10 (for 100 images) grid of generated digits, black on white, under its title (the run's
    setting and epoch, on as many lines as it needs). 600 px wide: each digit drawn at twice its size,
    so a montage that halves it shows the grid's own pixels."""
    lines = fit_lines(title, SAMPLE_TITLE_CHARS) if title else []
    fig, ax = plt.subplots(figsize=(3.0, 3.0 + 0.17 * len(lines) + (0.06 if lines else 0)))
    ax.imshow(image_grid(images), cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    if lines:
        ax.set_title("\n".join(lines), fontsize=9)
    return _save(fig, path, dpi=200)


SAMPLE_TITLE_CHARS = 40  # what fits on a line above a sample grid (600 px) at its font size (9 pt at 200 dpi)


def fit_lines(text: str, width: int, separators=(" · ", ", ", ": ")) -> list[str]:
    """`text` in lines of at most `width` characters, broken between its phrases (at the first of
    `separators` it has: ' · ', then ', ', then ': ', each kept at the line's end) before between
    words, and never inside a word: a title that fits its picture without cutting a phrase."""
    if len(text) <= width:
        return [text]
    for separator in separators:
        if separator in text:
            parts = text.split(separator)
            pieces = [part + separator.rstrip() for part in parts[:-1]] + [parts[-1]]
            lines, line = [], ""
            for piece in pieces:
                candidate = f"{line} {piece}" if line else piece
                if len(candidate) <= width or not line:
                    line = candidate
                else:
                    lines.append(line)
                    line = piece
            lines.append(line)
            return [wrapped for line in lines for wrapped in textwrap.wrap(line, width, break_long_words=False)]
    return textwrap.wrap(text, width, break_long_words=False)


PAIR_FRAME = 0.12  # the light grey between and around the digits (0 is white): a digit's own background is white


def save_nearest_pairs(generated: np.ndarray, nearest: np.ndarray, path: str | Path, distances=None,
                       title: str | None = None) -> Path:
    """Generated images (top row) above their nearest training images (bottom row), both in [-1, 1];
    `distances` (feature space) label the columns. Drawn as one image framed in light grey (one axes per
    digit costs a job about 0.3 s more per evaluated epoch, for the same picture)."""
    generated, nearest = as_images(np.asarray(generated, np.float32)), as_images(np.asarray(nearest, np.float32))
    columns, (height, width) = len(generated), generated.shape[1:]
    gap = max(1, height // 7)
    canvas = np.full((2 * height + 3 * gap, columns * (width + gap) + gap), PAIR_FRAME, dtype=np.float32)
    lefts = [gap + column * (width + gap) for column in range(columns)]
    for left, above, below in zip(lefts, generated, nearest):
        canvas[gap : gap + height, left : left + width] = (above + 1) / 2
        canvas[2 * gap + height : 2 * gap + 2 * height, left : left + width] = (below + 1) / 2
    figure_width = max(1.1 * columns, 3)
    fig, ax = plt.subplots(figsize=(figure_width, 2.8))
    ax.imshow(canvas, cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks([gap + height / 2, 2 * gap + 1.5 * height], ["generated", "nearest train"], fontsize=8)
    labels = [f"{float(distance):.2g}" for distance in distances] if distances is not None else [""] * columns
    ax.set_xticks([left + width / 2 for left in lefts], labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    ax.spines[:].set_visible(False)
    what = title + ": closest to training images (feature distance)" if title else "closest to training images"
    fig.suptitle("\n".join(fit_lines(what, int(13 * figure_width))), fontsize=9)
    return _save(fig, path)


def save_loss_curve(d_losses: np.ndarray, g_losses: np.ndarray, steps_per_epoch: int, path: str | Path,
                    title: str | None = None) -> Path:
    """Per-step D and G losses (faint) with their per-epoch means, against epochs, each line named
    in the legend. G's per-step losses may hold NaN where G did not step (n_critic > 1): only its
    steps are drawn."""
    d_losses, g_losses = np.asarray(d_losses), np.asarray(g_losses)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    epochs_axis = np.arange(1, len(d_losses) + 1) / steps_per_epoch
    for losses, name, color in ((d_losses, "D", "tab:blue"), (g_losses, "G", "tab:orange")):
        stepped = np.isfinite(losses)
        ax.plot(epochs_axis[stepped], losses[stepped], color=color, alpha=0.3, linewidth=0.6, label=f"{name} per step")
        whole = losses[: len(losses) // steps_per_epoch * steps_per_epoch].reshape(-1, steps_per_epoch)
        epoch_means = np.nanmean(whole, axis=1) if whole.size else whole[:, 0]
        ax.plot(np.arange(1, len(epoch_means) + 1), epoch_means, "o-", color=color, label=f"{name} epoch mean")
    ax.set_xlabel("epoch")
    epoch_ticks(ax, range(0, max(1, len(d_losses) // steps_per_epoch) + 1))  # 0: where training starts
    ax.set_ylabel(f"loss ({D_LOSS}, {G_LOSS}: the chosen loss's objectives)")
    ax.set_title(title or "losses")
    ax.grid(alpha=0.3)
    legend = ax.legend()
    for handle in legend.legend_handles:  # the faint per-step lines, legible in the legend
        handle.set_alpha(1.0)
        handle.set_linewidth(max(handle.get_linewidth(), 1.5))
    return _save(fig, path)


def save_run_curves(curves: list[tuple[str, list, list]], metric: str, path: str | Path, title: str) -> Path:
    """Every run's `metric` against epoch on one axis, each run its own colour (and, past ten runs, dash), and a
    legend beside the plot naming every run in the order given (the first drawn widest: the best)."""
    fig, ax = plt.subplots(figsize=(8 + 3.5 * math.ceil(len(curves) / 24), 4.5))
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20" if len(curves) <= 20 else "turbo")
    dashes = ("-", "--", ":", "-.")
    for index, (label, epochs, values) in enumerate(curves):
        colour = colours(index) if len(curves) <= 20 else colours(index / max(1, len(curves) - 1))
        ax.plot(epochs, values, "o", linestyle=dashes[(index // 10) % len(dashes)] if len(curves) > 10 else "-",
                color=colour, markersize=3, linewidth=2.5 if index == 0 else 1.2, zorder=3 if index == 0 else 2,
                label=label)
    ax.set_xlabel("epoch")
    epoch_ticks(ax, [epoch for _, epochs, _ in curves for epoch in epochs])
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylabel(metric)
    ax.set_title("\n".join(fit_lines(title, 70)), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, ncol=math.ceil(len(curves) / 24), frameon=False)
    return _save(fig, path)


def _save(fig, path, dpi: int = 100, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return path


def save_class_histogram(histogram: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """Fraction of generated images the classifier assigns to each digit, against uniform."""
    histogram = np.asarray(histogram, dtype=float)
    histogram = histogram / histogram.sum()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(np.arange(len(histogram)), histogram, color="tab:blue")
    ax.axhline(1.0 / len(histogram), color="black", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(np.arange(len(histogram)))
    ax.set_xlabel("digit class (classifier's argmax)")
    ax.set_ylabel("fraction of samples")
    ax.legend()
    if title:
        ax.set_title("\n".join(fit_lines(title, 60)))
    return _save(fig, path)


def save_sweep_heatmap(rows: list[dict], row_key: str, column_key: str, metric: str, path: str | Path) -> Path:
    """Final `metric` on a grid of two swept keys (empty cells: no value). A row may also hold
    `n` (runs averaged into the cell) and `half_width` (of the 95% CI of that mean): the cell
    then reads `mean ± half_width` and the title says how many runs each mean is over. Numbers
    in the metric's own format (`fid` 323.2, not 323); title and colour bar say which way is better."""
    row_values = sorted({row[row_key] for row in rows}, key=numeric_first)
    column_values = sorted({row[column_key] for row in rows}, key=numeric_first)
    table = np.full((len(row_values), len(column_values)), np.nan)
    half_widths = np.full_like(table, np.nan)
    for row in rows:
        cell = row_values.index(row[row_key]), column_values.index(row[column_key])
        table[cell], half_widths[cell] = row[metric], row.get("half_width", np.nan)
    fig, ax = plt.subplots(figsize=(1.4 * len(column_values) + 2.5, 1.0 * len(row_values) + 1.8))
    image = ax.imshow(table, cmap="viridis_r")
    # one number of decimals for the whole grid, as the metric's digits give its largest value
    cell_texts = np.array(scores.format_column(metric, [None if np.isnan(v) else float(v) for v in table.flat]),
                          dtype=object).reshape(table.shape)
    for (i, j), value in np.ndenumerate(table):
        text = cell_texts[i, j]
        if not np.isnan(half_widths[i, j]):
            text += f"\n± {scores.format_value(metric, float(half_widths[i, j]))}"
        red, green, blue, _ = image.cmap(image.norm(value)) if not np.isnan(value) else (0, 0, 0, 1)
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # dark text on the light cells
        ax.text(j, i, text, ha="center", va="center", color="black" if light else "white")
    ax.set_xticks(range(len(column_values)), column_values)
    ax.set_yticks(range(len(row_values)), row_values)
    ax.set_xlabel(column_key)
    ax.set_ylabel(row_key)
    counts = sorted({row["n"] for row in rows if row.get("n", 1) > 1})
    runs = "" if not counts else f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    better = scores.direction(metric) if scores.is_known(metric) else None
    suffix = f", {better} is better" if better else ""
    ax.set_title((f"final {metric}: mean ± 95% CI over {runs} runs" if runs else f"final {metric}") + suffix)
    fig.colorbar(image, ax=ax, label=f"{metric} ({better} is better)" if better else metric)
    return _save(fig, path)


def save_montage(image_files: list[Path], labels: list[str], path: str | Path, title: str | None = None) -> Path:
    """Several PNGs side by side (up to 4 per row), each with its label above it, inside the picture."""
    columns = min(4, len(image_files))
    rows = int(np.ceil(len(image_files) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4.4 * rows + (0.5 if title else 0)),
                             squeeze=False, layout="constrained")  # constrained: titles never leave the canvas
    for ax in axes.flat:
        ax.axis("off")
    for ax, file, label in zip(axes.flat, image_files, labels):
        ax.imshow(plt.imread(file))
        ax.set_title(label, fontsize=10)
    if title:  # on as many lines as it needs, broken between phrases: never cut at the picture's edges
        fig.suptitle("\n".join(fit_lines(title, 40 * columns)))
    return _save(fig, path, tight=False)  # laid out already (constrained)


def numeric_first(value):
    """Sort key: numbers by value ("0.3" before "0.10" is wrong, 0.1 before 0.3 right), then text."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


# A tile about a sample grid's own size (sample_grid's 600 px: 3.2 in at 200 dpi, less the margins), so the
# digits are not shrunk, with two label lines above it; a montage's title takes half an inch.
TILE_INCHES, TITLE_INCHES = (3.2, 3.9), 0.5
# The tallest montage (height / width) shown whole where MLflow draws a picture: its Artifacts tab, beside the
# file tree and the assistant's panel, has about 695 x 790 px of a 1600 x 1000 window.
MONTAGE_ASPECT = 1.1


def montage_columns(count: int, titled: bool) -> int:
    """The fewest columns (at most 6) that keep a montage of `count` tiles within MONTAGE_ASPECT."""
    width, height = TILE_INCHES
    for columns in range(1, 7):
        if (height * math.ceil(count / columns) + (TITLE_INCHES if titled else 0)) / (width * columns) <= MONTAGE_ASPECT:
            return min(count, columns)
    return min(count, 6)


def save_labelled_montage(image_files: list[Path], labels: list[str], path: str | Path, title: str | None = None) -> Path:
    """Pictures side by side (at most 6 a row, in as few columns as keep it from being taller than a
    window shows: `montage_columns`), each under its label (a line or two) in a font that reads at the
    picture's size."""
    count = len(image_files)
    columns = montage_columns(count, bool(title))
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(TILE_INCHES[0] * columns, TILE_INCHES[1] * rows + (TITLE_INCHES if title else 0)),
                             squeeze=False, layout="constrained")  # constrained: labels never leave the canvas
    for ax in axes.flat:
        ax.axis("off")
    for ax, file, label in zip(axes.flat, image_files, labels):
        picture = plt.imread(file)
        # a bare grid (an older run's image, white digits on black) drawn black on white like every picture
        ax.imshow(picture, cmap="gray_r" if picture.ndim == 2 else None, interpolation="antialiased")
        ax.set_title(label, fontsize=15)
    if title:  # a narrow montage: its title on two or three lines, broken between phrases
        fig.suptitle("\n".join(fit_lines(title, 26 * columns)), fontsize=15)
    return _save(fig, path, dpi=200, tight=False)  # laid out already (constrained)
