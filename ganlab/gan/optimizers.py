"""The optimizers of D and G, chosen by `optimizer.name`; each net always gets its own instance.

- `adam`: the tutorial's Adam, one learning rate `lr` and `beta_1` for both nets.
- `ttur`: the two time-scale update rule (Heusel et al. 2017) as SAGAN sets it (Zhang et
  al. 2019): Adam with D's rate `d_lr` above G's `g_lr`, betas `beta_1`, `beta_2`.
- `wgan_gp`: the recipe of `loss=wgan_gp`'s paper (Gulrajani et al. 2017, Algorithm 1):
  Adam with `lr` 1e-4, `beta_1` 0, `beta_2` 0.9 for both nets. The loss study
  (sweeps/losses.yaml) trains its `wgan_gp` arm with it, so the arm is the paper's recipe.
"""

from __future__ import annotations

from ganlab.core.registry import Registry
from ganlab.core.runtime import Deferred

keras = Deferred("keras")  # loads once an optimizer is built, not when the registry's names are read

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


@OPTIMIZERS.register("wgan_gp")
def wgan_gp(optimizer_cfg) -> tuple[keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """(D's, G's) Adam with the same settings, both betas given."""
    return tuple(keras.optimizers.Adam(learning_rate=optimizer_cfg.lr, beta_1=optimizer_cfg.beta_1,
                                       beta_2=optimizer_cfg.beta_2) for _ in range(2))


def build_optimizers(optimizer_cfg):
    """(D's optimizer, G's optimizer) of the choice `optimizer_cfg.name`."""
    return OPTIMIZERS.get(optimizer_cfg.name)(optimizer_cfg)
