"""bmtpt: Bayesian multi-task prompt transfer for frozen language models."""

__version__ = "0.1.0"
