"""Named caption templates.

``detailed`` asks for objects, attributes, positions and relations (TIPS' spatially rich captions); ``short``
for a one-sentence caption; ``rewrite`` conditions on the web caption and an existing synthetic caption
(TIPSv2's multi-granularity step). The default prompts follow PaliGemma's task prefixes; models with other
conventions take custom prompts (``--prompt NAME=TEXT``), where ``{web}`` and ``{synthetic}`` are filled in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CaptionTemplate:
    name: str
    prompt: str

    @property
    def needs_web(self) -> bool:
        return "{web}" in self.prompt

    @property
    def needs_synthetic(self) -> bool:
        return "{synthetic}" in self.prompt

    def render(self, web: str | None = None, synthetic: str | None = None) -> str:
        return self.prompt.replace("{web}", web or "").replace("{synthetic}", synthetic or "")


TEMPLATES = {
    "detailed": CaptionTemplate("detailed", "describe en"),
    "short": CaptionTemplate("short", "caption en"),
    "rewrite": CaptionTemplate(
        "rewrite", "rewrite en: combine the alt-text '{web}' with the description '{synthetic}' into one "
                   "accurate caption"),
}


def parse_templates(names: list[str], custom: list[str] | None = None) -> list[CaptionTemplate]:
    """Templates by name, plus custom ``NAME=PROMPT`` entries (which may shadow the built-in ones)."""
    table = dict(TEMPLATES)
    for entry in custom or []:
        if "=" not in entry:
            raise ValueError(f"custom prompt {entry!r} must look like NAME=PROMPT")
        name, prompt = entry.split("=", 1)
        table[name.strip()] = CaptionTemplate(name.strip(), prompt)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown caption templates {unknown}; known: {', '.join(table)}")
    return [table[n] for n in names]
