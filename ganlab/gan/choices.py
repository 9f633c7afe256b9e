"""The gan wing's choices by name: the registry of each config group it builds (`model`, `optimizer`, `loss`),
and `build_trainer`, which builds a job's G, D, loss and optimizers from them.

The entry of a job hands `registries()` to `ganlab.core.config.typed_config`, which checks each
group's `name` against them; core itself never imports this wing. The builders need
TensorFlow, which is imported here the quiet way (ganlab.core.runtime).
"""

from __future__ import annotations

from ganlab.core import runtime


def registries() -> dict:
    """{group: its registry} of the groups chosen by name."""
    runtime.import_tensorflow()
    from ganlab.gan.losses import LOSSES
    from ganlab.gan.models import MODELS
    from ganlab.gan.optimizers import OPTIMIZERS

    return {"model": MODELS, "optimizer": OPTIMIZERS, "loss": LOSSES}


def build_trainer(cfg, x_train):
    """G and D, their loss and optimizers, each chosen by name from its registry, and the trainer
    that trains them on `x_train`. `cfg`: the job's typed config (`ganlab.core.job_config.JobConfig`)."""
    from ganlab.gan.losses import build_loss
    from ganlab.gan.models import build_nets
    from ganlab.gan.optimizers import build_optimizers
    from ganlab.gan.trainer import GanTrainer

    loss = build_loss(cfg.loss, cfg.label_smoothing)
    d_optimizer, g_optimizer = build_optimizers(cfg.optimizer)
    generator, discriminator = build_nets(cfg, x_train.shape[1:])
    return GanTrainer(generator, discriminator, x_train, loss=loss, d_optimizer=d_optimizer,
                      g_optimizer=g_optimizer, batch_size=cfg.batch_size, seed=cfg.seed, ema=cfg.ema,
                      ema_warmup=cfg.ema_warmup)
