"""Synthetic captions with a local image-to-text model (PaliGemma by default): see docs/captions.md.

``open-tips caption`` is ``pipeline.caption``; the pieces: ``prompts`` (named templates), ``model`` (loading,
generation, cleaning), ``sources`` (units of work, tar/folder reading and writing), ``pipeline`` (batching,
resumption, rank split, summaries), ``tiny`` (a tiny random PaliGemma for smoke tests).
"""

from open_tips.captions.model import Captioner, DecodeSettings, clean_caption
from open_tips.captions.pipeline import PipelineConfig, caption, run_pipeline
from open_tips.captions.prompts import TEMPLATES, CaptionTemplate, parse_templates

__all__ = [
    "TEMPLATES",
    "CaptionTemplate",
    "Captioner",
    "DecodeSettings",
    "PipelineConfig",
    "caption",
    "clean_caption",
    "parse_templates",
    "run_pipeline",
]
