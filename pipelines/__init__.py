"""Beam jobs (preprocess, predict, evaluate) and the pure numpy code they share."""
