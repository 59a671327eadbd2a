"""superactivators: concept detection from the tail of token activations."""

__version__ = "0.1.0"
