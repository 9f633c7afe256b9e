"""The generator and discriminator of the tutorial, built from the `model` config.

G: noise (random_dim) -> Dense 256 -> LeakyReLU -> Dense 512 -> LeakyReLU -> Dense 1024
-> LeakyReLU -> Dense 784 tanh. D: image (784) -> Dense 1024 -> LeakyReLU -> Dropout ->
Dense 512 -> LeakyReLU -> Dropout -> Dense 256 -> LeakyReLU -> Dropout -> Dense 1.

With `dtype: bf16` the hidden layers compute in bfloat16 (Keras' mixed_bfloat16
policy: float32 weights, bfloat16 math) while each net's output layer stays float32, so
images and logits, and the losses computed from them, keep full precision.

Only the first Dense layer of each net gets the N(0, 0.02) kernel initialiser; all
other layers keep Keras defaults, as in the tutorial. D ends in a logit rather than a
sigmoid: with a from-logits cross-entropy that is the same model, and numerically
safer than clipping probabilities. `discriminator_probability` adds the sigmoid back.
"""

from __future__ import annotations

import keras

IMAGE_SIZE = 28 * 28
HIDDEN_DTYPE = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def build_nets(cfg) -> tuple[keras.Sequential, keras.Sequential]:
    """G and D of a job's config: the `model` group plus the top-level knobs they use."""
    return (build_generator(cfg.model, cfg.random_dim, cfg.dtype),
            build_discriminator(cfg.model, cfg.dropout, cfg.dtype))


def build_generator(model_cfg, random_dim: int, dtype: str = "fp32") -> keras.Sequential:
    """Noise vectors (N, random_dim) -> images (N, 784) in [-1, 1]."""
    hidden = HIDDEN_DTYPE[dtype]
    net = keras.Sequential(name="generator")
    net.add(keras.Input(shape=(random_dim,), name="noise"))
    for index, units in enumerate(model_cfg.generator_units):
        net.add(keras.layers.Dense(units, kernel_initializer=_kernel_init(model_cfg, index), dtype=hidden))
        net.add(keras.layers.LeakyReLU(negative_slope=model_cfg.leaky_relu_slope, dtype=hidden))
    net.add(keras.layers.Dense(IMAGE_SIZE, activation="tanh", name="image", dtype="float32"))
    return net


def build_discriminator(model_cfg, dropout: float, dtype: str = "fp32") -> keras.Sequential:
    """Images (N, 784) -> one logit each: log-odds that the image is real."""
    hidden = HIDDEN_DTYPE[dtype]
    net = keras.Sequential(name="discriminator")
    net.add(keras.Input(shape=(IMAGE_SIZE,), name="image"))
    for index, units in enumerate(model_cfg.discriminator_units):
        net.add(keras.layers.Dense(units, kernel_initializer=_kernel_init(model_cfg, index), dtype=hidden))
        net.add(keras.layers.LeakyReLU(negative_slope=model_cfg.leaky_relu_slope, dtype=hidden))
        net.add(keras.layers.Dropout(dropout, dtype=hidden))
    net.add(keras.layers.Dense(1, name="logit", dtype="float32"))
    return net


def _kernel_init(model_cfg, layer_index: int):
    if layer_index == 0:
        return keras.initializers.RandomNormal(stddev=model_cfg.first_layer_init_stddev)
    return "glorot_uniform"  # the Keras default, spelled out
