"""Demonstration data: the zarr replay store and the training-window dataset."""
