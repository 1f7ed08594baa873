"""``tessera evaluate``: scores a prediction directory against ground truth."""
