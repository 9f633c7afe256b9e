"""Scoring generated images: the formulas, the pretrained digit classifier, the evaluator.

Imports `core` only.
"""
