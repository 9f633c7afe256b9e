"""ganlab: the classic Keras MNIST GAN as a Hydra app, tracked in MLflow."""

__version__ = "0.1.0"
