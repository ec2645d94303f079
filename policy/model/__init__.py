"""The learned policy: networks, normaliser, `DiffusionPolicy`, EMA, checkpoints and training state."""
