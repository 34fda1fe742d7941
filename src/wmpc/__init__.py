"""wmpc: an on-robot runtime for learned multimodal world models."""

__version__ = "0.1.0"
