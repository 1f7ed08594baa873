"""Pure numpy shared by the jobs: tiling geometry, image decoding, source pairing, pixels out.

Nothing here imports Beam or TensorFlow."""
