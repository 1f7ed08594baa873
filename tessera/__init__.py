"""Tessera: the ``tessera`` command and the demo flow."""
