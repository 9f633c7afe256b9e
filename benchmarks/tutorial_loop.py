"""The tutorial's own training loop, ported to Keras 3, for side-by-side benchmarks.

This is ../shared/seed/gan_tutorial.md as written: Sequential G and D with a sigmoid
output, a combined `gan` model compiled with D frozen, and per step `generator.predict`,
NumPy batches and two `train_on_batch` calls. The only changes are those Keras 3
forces: `learning_rate=` for `lr=`, `negative_slope=` for LeakyReLU's alpha, and one Adam
instance per compiled model (Keras 3 refuses to share an optimizer between models).
"""

from __future__ import annotations

import numpy as np
from keras import Input, Model, Sequential, initializers
from keras.layers import Dense, Dropout, LeakyReLU
from keras.optimizers import Adam


def build(random_dim: int = 100):
    """Returns (generator, discriminator, gan) compiled as in the tutorial."""
    generator = Sequential([
        Input(shape=(random_dim,)),
        Dense(256, kernel_initializer=initializers.RandomNormal(stddev=0.02)), LeakyReLU(negative_slope=0.2),
        Dense(512), LeakyReLU(negative_slope=0.2),
        Dense(1024), LeakyReLU(negative_slope=0.2),
        Dense(784, activation="tanh"),
    ])
    generator.compile(loss="binary_crossentropy", optimizer=Adam(learning_rate=0.0002, beta_1=0.5))

    discriminator = Sequential([
        Input(shape=(784,)),
        Dense(1024, kernel_initializer=initializers.RandomNormal(stddev=0.02)), LeakyReLU(negative_slope=0.2), Dropout(0.3),
        Dense(512), LeakyReLU(negative_slope=0.2), Dropout(0.3),
        Dense(256), LeakyReLU(negative_slope=0.2), Dropout(0.3),
        Dense(1, activation="sigmoid"),
    ])
    discriminator.compile(loss="binary_crossentropy", optimizer=Adam(learning_rate=0.0002, beta_1=0.5))

    discriminator.trainable = False
    gan_input = Input(shape=(random_dim,))
    gan = Model(inputs=gan_input, outputs=discriminator(generator(gan_input)))
    gan.compile(loss="binary_crossentropy", optimizer=Adam(learning_rate=0.0002, beta_1=0.5))
    return generator, discriminator, gan


def train_step(generator, discriminator, gan, x_train: np.ndarray, batch_size: int = 128, random_dim: int = 100):
    """One step of the tutorial's loop body, unchanged in substance."""
    noise = np.random.normal(0, 1, size=[batch_size, random_dim])
    image_batch = x_train[np.random.randint(0, x_train.shape[0], size=batch_size)]
    generated_images = generator.predict(noise, verbose=0)
    X = np.concatenate([image_batch, generated_images])
    y_dis = np.zeros(2 * batch_size)
    y_dis[:batch_size] = 0.9
    discriminator.trainable = True
    d_loss = discriminator.train_on_batch(X, y_dis)
    discriminator.trainable = False
    noise = np.random.normal(0, 1, size=[batch_size, random_dim])
    g_loss = gan.train_on_batch(noise, np.ones(batch_size))
    return d_loss, g_loss
