"""Inference helpers shared by the CLI: image loading, prompts, zero-shot heads, dense visualisations."""
