"""Contracts between Tessera's steps: example features, Parquet schemas, directory layouts.

Nothing here imports Beam or Keras; TensorFlow Datasets is imported lazily only where a
TFDS feature description is built.
"""
