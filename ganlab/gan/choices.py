"""The gan wing's choices by name: the registry of each config group it builds (`model`, `optimizer`, `loss`).

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
