"""The GAN itself: the `model`, `loss` and `optimizer` choices and the training step.

Imports `core` only. Nothing here knows about MLflow, Hydra or scoring.
"""
