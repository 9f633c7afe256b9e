"""The GAN itself: the `model`, `loss` and `optimizer` choices and the training step.
`choices.registries()` hands the choices' registries to the config's check.

Imports `core` only. Nothing here knows about MLflow, Hydra or scoring.
"""
