"""Named caption templates and how a prompt is laid out for a given processor.

A template has two wordings, because captioners come in two kinds:

- ``prefix``: PaliGemma-style task prefixes ("caption en", "describe en"). PaliGemma checkpoints are trained on
  these; its processor expects ``<image>`` tokens first, then adds ``<bos>`` and the closing newline itself.
- ``instruction``: a natural-language request, for instruction-tuned VLMs whose processor has a chat template
  (Gemma 3, Qwen2.5-VL, LLaVA, ...); also used as plain text by processors with neither (``raw`` style).

Built-in templates:

- ``detailed``: a spatially detailed description (objects, attributes, positions, relations): the captions TIPS
  trains its second CLS token on.
- ``short``: one short sentence (a second granularity for TIPSv2's multi-granularity captions).
- ``rewrite``: TIPSv2's multi-granularity step: conditions on the web caption (``{web}``) and an existing
  synthetic caption (``{synthetic}``) of the same image and asks for one caption merging both.

``{web}`` and ``{synthetic}`` are placeholders filled per sample; a template that uses one of them needs that
field (a sample without it is recorded as failed for that template, see pipeline.py). Custom templates come
from ``--prompt NAME=TEXT`` (the same text for both styles).
"""

from __future__ import annotations

from dataclasses import dataclass

STYLES = ("prefix", "chat", "raw")


@dataclass(frozen=True)
class CaptionTemplate:
    name: str
    prefix: str  # PaliGemma task-prefix wording
    instruction: str  # natural-language wording (chat and raw styles)

    def text(self, style: str) -> str:
        return self.prefix if style == "prefix" else self.instruction

    def needs(self, field: str) -> bool:
        """Whether a placeholder (``web`` or ``synthetic``) occurs in either wording."""
        mark = "{" + field + "}"
        return mark in self.prefix or mark in self.instruction

    def render(self, style: str, web: str | None = None, synthetic: str | None = None) -> str:
        # str.replace rather than str.format: captions may contain braces.
        return self.text(style).replace("{web}", _flat(web)).replace("{synthetic}", _flat(synthetic))


def _flat(text: str | None) -> str:
    # PaliGemma ends the prompt at the first newline, so conditioning text must stay on one line.
    return " ".join((text or "").split())


TEMPLATES: dict[str, CaptionTemplate] = {
    "detailed": CaptionTemplate(
        "detailed",
        "describe en",
        "Describe this image in detail. Name the objects in it, their attributes (colour, size, material, "
        "count), where each one is in the image (left, right, top, bottom, centre, foreground, background) and "
        "how they relate to each other. Describe only what is visible, in plain prose, in one paragraph.",
    ),
    "short": CaptionTemplate("short", "caption en", "Write one short sentence describing this image."),
    "rewrite": CaptionTemplate(
        "rewrite",
        "rewrite en the alt-text '{web}' and the description '{synthetic}' as one accurate caption",
        'Here is the alt-text of this image from the web: "{web}". Here is a description of the image: '
        '"{synthetic}". Write one accurate caption of the image that keeps the specific names and facts of the '
        "alt-text that the image supports and the visual details of the description. Answer with the caption "
        "only.",
    ),
}


def parse_templates(names: list[str], custom: list[str] | None = None) -> list[CaptionTemplate]:
    """Templates by name, in the order given (a later template may rewrite an earlier one's caption), plus
    custom ``NAME=PROMPT`` entries, which may shadow the built-in names."""
    table = dict(TEMPLATES)
    for entry in custom or []:
        name, sep, prompt = entry.partition("=")
        if not sep or not name.strip() or not prompt.strip():
            raise ValueError(f"custom prompt {entry!r} must look like NAME=PROMPT")
        table[name.strip()] = CaptionTemplate(name.strip(), prompt, prompt)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown caption templates {unknown}; known: {', '.join(table)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a template is named twice in {names}")
    if not names:
        raise ValueError("no caption template given")
    return [table[n] for n in names]
