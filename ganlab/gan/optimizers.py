"""The optimizers of D and G, chosen by `optimizer.name`; each net always gets its own instance.

- `adam`: the tutorial's Adam, one learning rate `lr` and `beta_1` for both nets.
- `ttur`: the two time-scale update rule (Heusel et al. 2017) as SAGAN sets it (Zhang et
  al. 2019): Adam with D's rate `d_lr` above G's `g_lr`, betas `beta_1`, `beta_2`.
"""

from __future__ import annotations

import keras

from ganlab.core.registry import Registry

OPTIMIZERS = Registry("optimizer")


@OPTIMIZERS.register("adam")
def adam(optimizer_cfg) -> tuple[keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """(D's, G's) Adam with the same settings."""
    return tuple(keras.optimizers.Adam(learning_rate=optimizer_cfg.lr, beta_1=optimizer_cfg.beta_1) for _ in range(2))


@OPTIMIZERS.register("ttur")
def ttur(optimizer_cfg) -> tuple[keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """(D's, G's) Adam with separate learning rates."""
    return tuple(keras.optimizers.Adam(learning_rate=rate, beta_1=optimizer_cfg.beta_1, beta_2=optimizer_cfg.beta_2)
                 for rate in (optimizer_cfg.d_lr, optimizer_cfg.g_lr))


def build_optimizers(optimizer_cfg):
    """(D's optimizer, G's optimizer) of the choice `optimizer_cfg.name`."""
    return OPTIMIZERS.get(optimizer_cfg.name)(optimizer_cfg)
