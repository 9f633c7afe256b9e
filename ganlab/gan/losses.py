"""The GAN losses, chosen by `loss.name`: what D minimises on real and generated images, and what G minimises.

| name | paper | D's loss | G's loss |
|---|---|---|---|
| `ns` | Goodfellow et al. 2014 (non-saturating), the tutorial's | BCE(D(x), 1 - label_smoothing) + BCE(D(G(z)), 0) | BCE(D(G(z)), 1) |
| `hinge` | Lim & Ye 2017; Zhang et al. 2019 (SAGAN) | mean relu(1 - D(x)) + mean relu(1 + D(G(z))) | -mean D(G(z)) |
| `lsgan` | Mao et al. 2017 (targets 0 and 1) | (mean (D(x) - 1)^2 + mean D(G(z))^2) / 2 | mean (D(G(z)) - 1)^2 / 2 |
| `wgan_gp` | Gulrajani et al. 2017 | mean D(G(z)) - mean D(x) + gp_weight * GP (D without dropout) | -mean D(G(z)) |

D always ends in one unbounded output (a logit for `ns`: sigmoid + BCE is computed from
logits, the same model as a sigmoid output and numerically safer). `d_output` turns it
into what `d_real`/`d_fake` report: a probability for `ns`, the raw output otherwise.
`n_critic` (in every loss's YAML) is the number of D steps per G step. The paper's optimizer
for `wgan_gp` is its own choice, `optimizer=wgan_gp` (ganlab.gan.optimizers).
"""

from __future__ import annotations

from ganlab.core.errors import InputError
from ganlab.core.registry import Registry
from ganlab.core.runtime import Deferred

tf = Deferred("tensorflow")  # loads once a loss is computed, not when the registry's names are read

LOSSES = Registry("loss")


class GanLoss:
    """One loss: D's and G's objectives, and the knobs it reads."""

    name: str
    uses_label_smoothing = False  # the top-level `label_smoothing` knob (only `ns` reads it)

    def __init__(self, n_critic: int = 1, gradient_penalty: float = 0.0):
        self.n_critic = n_critic
        self.gradient_penalty = gradient_penalty  # weight of the gradient penalty in D's loss; 0 = none

    @classmethod
    def from_config(cls, loss_cfg, label_smoothing) -> "GanLoss":
        """Checks the knobs; a knob this loss does not read is refused, never ignored."""
        if label_smoothing is not None:
            users = ", ".join(name for name in LOSSES.names() if LOSSES.get(name).uses_label_smoothing)
            raise InputError(f"label_smoothing: got {label_smoothing!r}, but loss={cls.name} does not use label "
                             f"smoothing (only {users} does); leave label_smoothing out with this loss.")
        return cls(n_critic=loss_cfg.n_critic)

    def discriminator(self, real_logits, fake_logits):
        raise NotImplementedError

    def generator(self, fake_logits):
        raise NotImplementedError

    def d_output(self, logits):
        return logits


@LOSSES.register("ns")
class NonSaturating(GanLoss):
    name = "ns"
    uses_label_smoothing = True

    def __init__(self, label_smoothing: float, n_critic: int = 1):
        super().__init__(n_critic)
        self.real_target = 1.0 - label_smoothing

    @classmethod
    def from_config(cls, loss_cfg, label_smoothing) -> "NonSaturating":
        if label_smoothing is None:
            raise InputError("label_smoothing: loss=ns needs it (null means another loss set it aside); give a "
                             "number in [0, 1), e.g. label_smoothing=0.1.")
        return cls(label_smoothing, n_critic=loss_cfg.n_critic)

    def discriminator(self, real_logits, fake_logits):
        # One mean over [real, generated], as the tutorial trains D on one concatenated batch.
        logits = tf.concat([real_logits, fake_logits], axis=0)
        targets = tf.concat([tf.fill(tf.shape(real_logits), self.real_target), tf.zeros_like(fake_logits)], axis=0)
        return _bce_from_logits(targets, logits)

    def generator(self, fake_logits):
        return _bce_from_logits(tf.ones_like(fake_logits), fake_logits)

    def d_output(self, logits):
        return tf.sigmoid(logits)


@LOSSES.register("hinge")
class Hinge(GanLoss):
    name = "hinge"

    def discriminator(self, real_logits, fake_logits):
        return tf.reduce_mean(tf.nn.relu(1.0 - real_logits)) + tf.reduce_mean(tf.nn.relu(1.0 + fake_logits))

    def generator(self, fake_logits):
        return -tf.reduce_mean(fake_logits)


@LOSSES.register("lsgan")
class LeastSquares(GanLoss):
    name = "lsgan"

    def discriminator(self, real_logits, fake_logits):
        return 0.5 * (tf.reduce_mean(tf.square(real_logits - 1.0)) + tf.reduce_mean(tf.square(fake_logits)))

    def generator(self, fake_logits):
        return 0.5 * tf.reduce_mean(tf.square(fake_logits - 1.0))


@LOSSES.register("wgan_gp")
class WassersteinGP(GanLoss):
    name = "wgan_gp"

    @classmethod
    def from_config(cls, loss_cfg, label_smoothing) -> "WassersteinGP":
        loss = super().from_config(loss_cfg, label_smoothing)
        loss.gradient_penalty = float(loss_cfg.gp_weight)
        return loss

    def discriminator(self, real_logits, fake_logits):
        return tf.reduce_mean(fake_logits) - tf.reduce_mean(real_logits)

    def generator(self, fake_logits):
        return -tf.reduce_mean(fake_logits)


def build_loss(loss_cfg, label_smoothing) -> GanLoss:
    """The loss `loss_cfg.name` selects, from its group config and the top-level `label_smoothing`."""
    return LOSSES.get(loss_cfg.name).from_config(loss_cfg, label_smoothing)


def gradient_penalty(discriminator, real, fake, mix):
    """Gulrajani et al.'s penalty: mean over images of (||grad_x D(x)|| - 1)^2 at x = mix * real + (1 - mix) * fake,
    `mix` uniform in [0, 1] per image (shaped to broadcast over the image's axes).

    The gradient is taken of the critic as the paper has it, without dropout (Gulrajani et al.
    2017, Algorithm 1; their critics have none): D is called in inference mode, which here
    switches off only its dropout (no D in ganlab.gan.models has batch normalisation). With
    dropout on, the penalty would constrain the gradient of one random thinned net per image,
    not of the critic that the Wasserstein estimate is read from."""
    mixed = mix * real + (1.0 - mix) * fake
    with tf.GradientTape() as tape:
        tape.watch(mixed)
        outputs = discriminator(mixed, training=False)
    gradients = tf.reshape(tape.gradient(outputs, mixed), [tf.shape(mixed)[0], -1])
    norms = tf.sqrt(tf.reduce_sum(tf.square(gradients), axis=1) + 1e-12)  # the epsilon keeps d norm / d grad finite at 0
    return tf.reduce_mean(tf.square(norms - 1.0))


def _bce_from_logits(targets, logits):
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits))
