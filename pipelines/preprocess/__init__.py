"""``tessera preprocess``: raw image folders -> overlap-tiled, augmented, sharded TFDS dataset; and ``tessera inspect``."""
