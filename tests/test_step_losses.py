"""Per-step losses in MLflow: `d_loss_step` at every global step, `g_loss_step` only where G moved (n_critic > 1),
beside the epoch means, written into a real SQLite store by a real JobRun."""

from __future__ import annotations

import numpy as np

from ganlab.gan.trainer import EpochRecord
from ganlab.tracking.job_run import JobRun
from ganlab.tracking.store import default_tracking_uri
from ganlab.training import epochs


def test_step_losses_land_at_their_global_steps_and_g_only_where_it_moved(tmp_path):
    steps = 6
    with JobRun(default_tracking_uri(tmp_path), "ganlab", tmp_path, "wgan", {}) as run:
        for epoch in (1, 2):
            d = np.arange(steps, dtype=float) + 10 * epoch
            g = np.where(np.arange(1, steps + 1) % 3 == 0, -d, np.nan)  # n_critic = 3: G moves every third step
            epochs.log_epoch(run, EpochRecord(epoch, d, g, 0.5, 0.5, 1.0, steps), last_epoch=2)
        history = lambda key: [(p.step, p.value) for p in run.client.get_metric_history(run.run_id, key)]  # noqa: E731
        d_points, g_points, means = history(epochs.D_LOSS_STEP), history(epochs.G_LOSS_STEP), history("d_loss")
    assert [step for step, _ in d_points] == list(range(1, 13)) and d_points[6] == (7, 20.0)  # epoch 2 starts at 7
    assert g_points == [(3, -12.0), (6, -15.0), (9, -22.0), (12, -25.0)]
    assert means == [(1, 12.5), (2, 22.5)]  # the epoch means keep their key and step = epoch
