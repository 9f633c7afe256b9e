"""The gan wing's choices by name: the registry of each config group it builds (`model`, `optimizer`, `loss`),
and `build_trainer`, which builds a job's G, D, loss and optimizers from them.

The entry of a job hands `registries()` to `ganlab.core.config.typed_config`, which checks each
group's `name` against them; core itself never imports this wing. Reading the registries loads
no TensorFlow (the choices' modules import it deferred, `ganlab.core.runtime.Deferred`): a refused
config costs no TensorFlow start-up. The builders load it, once the job has configured it.
"""

from __future__ import annotations

from ganlab.gan.losses import LOSSES, build_loss
from ganlab.gan.models import MODELS, build_nets
from ganlab.gan.optimizers import OPTIMIZERS, build_optimizers


def registries() -> dict:
    """{group: its registry} of the groups chosen by name."""
    return {"model": MODELS, "optimizer": OPTIMIZERS, "loss": LOSSES}


def build_trainer(cfg, x_train):
    """G and D, their loss and optimizers, each chosen by name from its registry, and the trainer
    that trains them on `x_train`. `cfg`: the job's typed config (`ganlab.core.job_config.JobConfig`)."""
    from ganlab.gan.trainer import GanTrainer  # imports TensorFlow and Keras themselves

    loss = build_loss(cfg.loss, cfg.label_smoothing)
    d_optimizer, g_optimizer = build_optimizers(cfg.optimizer)
    generator, discriminator = build_nets(cfg, x_train.shape[1:])
    return GanTrainer(generator, discriminator, x_train, loss=loss, d_optimizer=d_optimizer,
                      g_optimizer=g_optimizer, batch_size=cfg.batch_size, seed=cfg.seed, ema=cfg.ema,
                      ema_warmup=cfg.ema_warmup)
