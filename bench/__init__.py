"""tokenbench: one protocol to benchmark token-sparsification methods for vision transformers."""

__version__ = "0.1.0"
