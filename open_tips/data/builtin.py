"""The built-in procedural dataset: coloured shapes with known content.

Each sample is a deterministic function of (seed, index): an RGB image of 1-4 shapes over a textured
background, drawn in an occlusion order, with
- a terse, noisy, web-style caption (often only the largest object, sometimes a wrong colour or filler text),
- two synthetic captions: ``short`` (every object with its colour) and ``detailed`` (sizes, positions,
  occlusion and left/right relations),
- ground truth for evaluation: ``segmentation`` (class per pixel, 0 = background), ``depth`` (metres; shapes
  drawn later are nearer), ``labels`` (visible classes), ``main_label`` (largest visible object).
No files: everything is generated on the fly.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon"]
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (25, 25, 25),
}
COLOUR_NAMES = list(COLOURS)
POSITIONS = [["in the top left", "at the top", "in the top right"], ["on the left", "in the centre", "on the right"],
             ["in the bottom left", "at the bottom", "in the bottom right"]]
FILLERS = ["IMG_{n}.jpg", "free download", "stock photo {n}", "wallpaper hd", "best price", "click here",
           "my photos {n}"]
BACKGROUND_DEPTH = (8.0, 10.0)  # metres, near the bottom edge to the top edge


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, offset: float = 0.0):
        return [(cx + radius * math.cos(angle + offset + 2 * math.pi * i / n),
                 cy + radius * math.sin(angle + offset + 2 * math.pi * i / n)) for i in range(n)]

    if kind == "square":
        return ring(4, r, math.pi / 4)
    if kind == "triangle":
        return ring(3, r, -math.pi / 2)
    if kind == "diamond":
        return [(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)]
    if kind == "hexagon":
        return ring(6, r)
    if kind == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, 0.45 * r, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if kind == "cross":
        w = 0.33 * r
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    raise ValueError(kind)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, angle: float,
                fill) -> None:
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(0.35 * r)))
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _size_word(fraction: float) -> str:
    return "small" if fraction < 0.05 else ("large" if fraction > 0.15 else "medium-sized")


class BuiltinShapes(Dataset):
    """Map-style dataset of procedural shape images; ``dataset[i]`` is a sample dict (see module doc)."""

    def __init__(self, num_samples: int = 2048, image_size: int = 112, seed: int = 0,
                 caption_noise: float = 0.5, max_objects: int = 4) -> None:
        if num_samples < 1 or image_size < 16:
            raise ValueError("num_samples must be >= 1 and image_size >= 16")
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.caption_noise = caption_noise
        self.max_objects = max_objects
        self.class_names = SHAPE_CLASSES

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index, 7])
        size = self.image_size
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
        # Textured background: a colour gradient plus noise, so the scene is not trivially flat.
        base = rng.uniform(70, 170, size=3)
        tilt = rng.uniform(-40, 40, size=3)
        background = base[None, None] + tilt[None, None] * ys[..., None] + rng.normal(0, 12, (size, size, 3))
        image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        segmentation = np.zeros((size, size), np.uint8)
        instance = np.full((size, size), -1, np.int16)
        depth = (BACKGROUND_DEPTH[1] - (BACKGROUND_DEPTH[1] - BACKGROUND_DEPTH[0]) * ys).astype(np.float32)

        count = int(rng.integers(1, self.max_objects + 1))
        depths = np.sort(rng.uniform(1.0, 7.0, size=count))[::-1]  # drawn later = nearer
        objects = []
        for i in range(count):
            kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
            radius = float(rng.uniform(0.1, 0.3)) * size
            cx, cy = (float(v) * size for v in rng.uniform(0.15, 0.85, size=2))
            angle = float(rng.uniform(0, 2 * math.pi))
            _draw_shape(draw, kind, cx, cy, radius, angle, COLOURS[colour])
            mask_image = Image.new("L", (size, size), 0)
            _draw_shape(ImageDraw.Draw(mask_image), kind, cx, cy, radius, angle, 255)
            mask = np.asarray(mask_image) > 127
            segmentation[mask] = SHAPE_CLASSES.index(kind) + 1
            instance[mask] = i
            depth[mask] = depths[i]
            objects.append({"class": kind, "colour": colour, "centre": (cx / size, cy / size),
                            "depth": float(depths[i]), "order": i})
        for i, obj in enumerate(objects):
            obj["visible"] = float((instance == i).mean())
        visible = [o for o in objects if o["visible"] > 0.002]
        if not visible:  # everything fully hidden cannot happen for the top shape, but stay safe
            visible = objects[-1:]
        # Occlusion relations: i in front of j when i was drawn later and their footprints overlap.
        for obj in visible:
            obj["in_front_of"] = []
        for i, front in enumerate(objects):
            for back in objects[:i]:
                if back in visible and front in visible and self._overlap(front, back, size):
                    front["in_front_of"].append(back)
        main = max(visible, key=lambda o: o["visible"])
        labels = sorted(int(c) for c in np.unique(segmentation) if c != 0)  # every class with a pixel
        return {
            "__key__": f"builtin-{self.seed}-{index:08d}",
            "image": image,
            "web_caption": self._web_caption(main, visible, rng),
            "synthetic_captions": [
                {"text": self._short_caption(visible), "template": "short", "model": "builtin"},
                {"text": self._detailed_caption(visible), "template": "detailed", "model": "builtin"},
            ],
            "segmentation": segmentation,
            "depth": depth,
            "labels": labels,
            "main_label": SHAPE_CLASSES.index(main["class"]) + 1,
            "objects": [{k: v for k, v in o.items() if k != "in_front_of"} for o in visible],
        }

    @staticmethod
    def _overlap(a: dict, b: dict, size: int) -> bool:
        ax, ay = a["centre"]
        bx, by = b["centre"]
        return math.hypot(ax - bx, ay - by) < 0.4

    def _web_caption(self, main: dict, visible: list[dict], rng: np.random.Generator) -> str:
        noise = self.caption_noise
        colour = main["colour"]
        if rng.random() < 0.3 * noise:
            colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        options = [f"{colour} {main['class']}", f"{_article(main['class'])} {main['class']}", f"{main['class']} picture",
                   f"the {colour} {main['class']}"]
        caption = options[int(rng.integers(len(options)))]
        if rng.random() < 0.5 * noise:
            filler = FILLERS[int(rng.integers(len(FILLERS)))].format(n=int(rng.integers(1000, 9999)))
            caption = f"{caption} {filler}" if rng.random() < 0.5 else f"{filler} {caption}"
        if rng.random() < 0.15 * noise:  # sometimes the alt-text says nothing about the content
            caption = FILLERS[int(rng.integers(len(FILLERS)))].format(n=int(rng.integers(1000, 9999)))
        return caption

    @staticmethod
    def _short_caption(visible: list[dict]) -> str:
        parts = [f"{_article(o['colour'])} {o['colour']} {o['class']}" for o in sorted(visible, key=lambda o: -o["visible"])]
        return _join(parts) + "."

    @staticmethod
    def _detailed_caption(visible: list[dict]) -> str:
        sentences = []
        for obj in sorted(visible, key=lambda o: -o["visible"]):
            col = min(int(obj["centre"][0] * 3), 2)
            row = min(int(obj["centre"][1] * 3), 2)
            size_word = _size_word(obj["visible"])
            text = f"{_article(size_word)} {size_word} {obj['colour']} {obj['class']} {POSITIONS[row][col]}"
            if obj.get("in_front_of"):
                behind = obj["in_front_of"][0]
                text += f", in front of the {behind['colour']} {behind['class']}"
            sentences.append(text)
        if len(visible) >= 2:
            left, right = sorted(visible[:2], key=lambda o: o["centre"][0])
            sentences.append(f"the {left['colour']} {left['class']} is left of the {right['colour']} {right['class']}")
        return ". ".join(s[0].upper() + s[1:] for s in sentences) + "."
