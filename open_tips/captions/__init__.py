"""Synthetic caption generation with a local image-to-text model (PaliGemma by default)."""
