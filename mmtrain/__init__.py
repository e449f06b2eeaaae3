"""mmtrain: config-driven training of multimodal (image + text) models."""

__version__ = "0.1.0"
