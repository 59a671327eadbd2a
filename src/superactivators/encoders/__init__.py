"""Loaders for pretrained models that ship inside Python packages."""
