"""``tessera predict``: batch prediction of exported models over images (Beam RunInference)."""
