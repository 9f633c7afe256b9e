"""Generators and discriminators, chosen by `model.name`, built for the data's image shape.

- `mlp`, the tutorial's nets. G: noise (random_dim) -> Dense 256 -> LeakyReLU -> Dense 512
  -> LeakyReLU -> Dense 1024 -> LeakyReLU -> Dense H*W tanh. D: image (H*W) -> Dense 1024
  -> LeakyReLU -> Dropout -> Dense 512 -> LeakyReLU -> Dropout -> Dense 256 -> LeakyReLU
  -> Dropout -> Dense 1. Only the first Dense layer of each net gets the N(0, 0.02) kernel
  initialiser; all others keep Keras defaults, as in the tutorial. Images are flat vectors.
- `dcgan`, the convolutional GAN of TensorFlow's DCGAN tutorial for HxW images (H and W
  divisible by 4). G: Dense (H/4)(W/4)256 without bias -> BatchNorm -> LeakyReLU -> reshape
  -> Conv2DTranspose 128 (5x5, stride 1) -> BN -> LeakyReLU -> Conv2DTranspose 64 (5x5,
  stride 2) -> BN -> LeakyReLU -> Conv2DTranspose 1 (5x5, stride 2, tanh). D: Conv2D 64
  (5x5, stride 2) -> LeakyReLU -> Dropout -> Conv2D 128 (5x5, stride 2) -> LeakyReLU ->
  Dropout -> Flatten -> Dense 1. Images are (H, W, 1).

Both Ds end in one unbounded output (a logit for the `ns` loss: see ganlab.gan.losses).
With `dtype: bf16` the hidden layers compute in bfloat16 (Keras' mixed_bfloat16 policy:
float32 weights, bfloat16 math) while each net's output layer stays float32, so images
and D's outputs, and the losses computed from them, keep full precision.
"""

from __future__ import annotations

import math

from ganlab.core.errors import InputError
from ganlab.core.registry import Registry
from ganlab.core.runtime import Deferred

keras = Deferred("keras")  # loads once a net is built, not when the registry's names are read

MODELS = Registry("model")
HIDDEN_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16"}  # keys: ganlab.core.config.DTYPES


def build_nets(cfg, image_shape: tuple[int, ...]) -> tuple[keras.Model, keras.Model]:
    """(G, D) of a job's config: the `model` group's choice, with the top-level knobs it uses,
    for images of `image_shape` (the data's, e.g. (28, 28))."""
    build = MODELS.get(cfg.model.name)
    return build(cfg.model, tuple(image_shape), cfg.random_dim, cfg.dropout, HIDDEN_POLICY[cfg.dtype])


@MODELS.register("mlp")
def mlp(model_cfg, image_shape, random_dim: int, dropout: float, hidden: str) -> tuple[keras.Model, keras.Model]:
    pixels = math.prod(image_shape)
    generator = keras.Sequential(name="generator")
    generator.add(keras.Input(shape=(random_dim,), name="noise"))
    for index, units in enumerate(model_cfg.generator_units):
        generator.add(keras.layers.Dense(units, kernel_initializer=_first_layer_init(model_cfg, index), dtype=hidden))
        generator.add(keras.layers.LeakyReLU(negative_slope=model_cfg.leaky_relu_slope, dtype=hidden))
    generator.add(keras.layers.Dense(pixels, activation="tanh", name="image", dtype="float32"))

    discriminator = keras.Sequential(name="discriminator")
    discriminator.add(keras.Input(shape=(pixels,), name="image"))
    for index, units in enumerate(model_cfg.discriminator_units):
        discriminator.add(keras.layers.Dense(units, kernel_initializer=_first_layer_init(model_cfg, index), dtype=hidden))
        discriminator.add(keras.layers.LeakyReLU(negative_slope=model_cfg.leaky_relu_slope, dtype=hidden))
        discriminator.add(keras.layers.Dropout(dropout, dtype=hidden))
    discriminator.add(keras.layers.Dense(1, name="logit", dtype="float32"))
    return generator, discriminator


@MODELS.register("dcgan")
def dcgan(model_cfg, image_shape, random_dim: int, dropout: float, hidden: str) -> tuple[keras.Model, keras.Model]:
    height, width = image_shape[:2]
    if height % 4 or width % 4:
        raise InputError(f"model=dcgan: the data's images are {height}x{width}; this model needs a height and "
                         "width divisible by 4 (two stride-2 upsamplings), e.g. 28x28.")
    if len(model_cfg.generator_filters) != 3:  # the base, a stride-1 and a stride-2 layer; the output layer upsamples last
        raise InputError(f"model.generator_filters: got {list(model_cfg.generator_filters)}; model=dcgan takes exactly "
                         "3 entries (the 7x7 base, then a stride-1 and a stride-2 Conv2DTranspose layer before the "
                         "stride-2 output layer: two upsamplings to 28x28), e.g. [256, 128, 64].")
    slope, kernel = model_cfg.leaky_relu_slope, model_cfg.kernel_size
    base = (height // 4, width // 4, model_cfg.generator_filters[0])
    layers = keras.layers
    generator = keras.Sequential(name="generator")
    generator.add(keras.Input(shape=(random_dim,), name="noise"))
    generator.add(layers.Dense(math.prod(base), use_bias=False, dtype=hidden))
    generator.add(layers.BatchNormalization(dtype=hidden))
    generator.add(layers.LeakyReLU(negative_slope=slope, dtype=hidden))
    generator.add(layers.Reshape(base, dtype=hidden))
    for filters, stride in zip(model_cfg.generator_filters[1:], (1, 2)):
        generator.add(layers.Conv2DTranspose(filters, kernel, strides=stride, padding="same", use_bias=False, dtype=hidden))
        generator.add(layers.BatchNormalization(dtype=hidden))
        generator.add(layers.LeakyReLU(negative_slope=slope, dtype=hidden))
    generator.add(layers.Conv2DTranspose(1, kernel, strides=2, padding="same", use_bias=False, activation="tanh",
                                         name="image", dtype="float32"))

    discriminator = keras.Sequential(name="discriminator")
    discriminator.add(keras.Input(shape=(height, width, 1), name="image"))
    for filters in model_cfg.discriminator_filters:
        discriminator.add(layers.Conv2D(filters, kernel, strides=2, padding="same", dtype=hidden))
        discriminator.add(layers.LeakyReLU(negative_slope=slope, dtype=hidden))
        discriminator.add(layers.Dropout(dropout, dtype=hidden))
    discriminator.add(layers.Flatten(dtype=hidden))
    discriminator.add(layers.Dense(1, name="logit", dtype="float32"))
    return generator, discriminator


def _first_layer_init(model_cfg, layer_index: int):
    if layer_index == 0:
        return keras.initializers.RandomNormal(stddev=model_cfg.first_layer_init_stddev)
    return "glorot_uniform"  # the Keras default, spelled out
