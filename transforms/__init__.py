"""Beam building blocks for zero-shot image labeling, one module per stage.

read -> decode -> embed -> rank -> write, composed by `classify.ZeroShotClassify`; backends in `backends/`.
"""
