"""The built-in procedural dataset: coloured shapes with known content.

Each sample is a deterministic function of (seed, index): an RGB image of 1-4 shapes over a textured
background, drawn in an occlusion order (later shapes over earlier ones), with
- ``web_caption``: terse and noisy, like web alt-text (often only the largest object, sometimes a wrong colour,
  sometimes filler such as "IMG_2041.jpg" or nothing about the content at all; ``caption_noise`` scales this),
- ``synthetic_captions``: ``short`` (every described object with its colour) and ``detailed`` (sizes, positions
  such as "in the top left", "in front of" for real occlusions, one "left of" relation),
- ground truth for evaluation:
  ``segmentation`` uint8 [H, W], class per pixel (0 = background, shapes 1..K in ``SHAPE_CLASSES`` order);
  ``depth`` float32 [H, W] metres (background 10 m at the top to 8 m at the bottom, each shape a fronto-parallel
  plane between 1 and 7 m, drawn later = nearer); ``labels`` sorted class ids with at least one pixel;
  ``main_label`` the class of the object with the most visible pixels; ``objects`` the described objects;
  optionally ``normals`` float32 [H, W, 3] (``with_normals=True``).

Objects hidden down to a sliver (fewer than ``MIN_VISIBLE`` of the pixels) are not described in the captions:
a captioner could not see them. Their few pixels still count in ``segmentation`` and ``labels``, which are the
pixel truth. No files: everything is generated on the fly (about 1000 samples/s at 112 px on one core).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset, IterableDataset, get_worker_info

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "hexagon"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOUR_NAMES = list(COLOURS)
POSITIONS = [
    ["in the top left", "at the top", "in the top right"],
    ["on the left", "in the centre", "on the right"],
    ["in the bottom left", "at the bottom", "in the bottom right"],
]
FILLERS = [
    "IMG_{n}.jpg",
    "free download",
    "stock photo {n}",
    "wallpaper hd",
    "best price",
    "click here",
    "my photos {n}",
]
BACKGROUND_DEPTH = (8.0, 10.0)  # metres, near the bottom edge to the top edge
SHAPE_DEPTH = (1.0, 7.0)  # metres; always nearer than the background
MIN_VISIBLE = 0.002  # fraction of the image an object must show to be described in the captions


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, offset: float = 0.0) -> list[tuple[float, float]]:
        return [
            (
                cx + radius * math.cos(angle + offset + 2 * math.pi * i / n),
                cy + radius * math.sin(angle + offset + 2 * math.pi * i / n),
            )
            for i in range(n)
        ]

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
        return [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
    raise ValueError(kind)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    cx: float,
    cy: float,
    r: float,
    angle: float,
    fill: int | tuple[int, int, int],
) -> None:
    # No anti-aliasing: the drawn pixel set depends only on the geometry, not on the fill or the image mode,
    # so the image and the id map (-> segmentation, depth) agree pixel for pixel.
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


class _Grids:
    """Per-size constant arrays, computed once per image size."""

    def __init__(self, size: int) -> None:
        self.rows = (np.arange(size, dtype=np.float32) / size)[:, None]  # [H, 1] in [0, 1)
        far, near = BACKGROUND_DEPTH[1], BACKGROUND_DEPTH[0]
        self.background_depth = np.broadcast_to(far - (far - near) * self.rows, (size, size)).astype(
            np.float32
        )
        # Normals in the convention of open_tips.eval.normals.normals_from_depth (orthographic, +z toward the
        # viewer, slopes in metres per image width / 10): the background plane tilts by its depth gradient.
        slope = (far - near) / 10.0
        self.background_normal = np.array([0.0, slope, 1.0], np.float32) / math.hypot(slope, 1.0)


_GRID_CACHE: dict[int, _Grids] = {}


def make_sample(
    index: int,
    seed: int = 0,
    image_size: int = 112,
    caption_noise: float = 0.5,
    max_objects: int = 4,
    with_normals: bool = False,
) -> dict:
    """Sample ``index`` of the procedural dataset with ``seed`` (see the module docstring for the fields)."""
    rng = np.random.default_rng([seed, index, 7])
    size = image_size
    grids = _GRID_CACHE.get(size)
    if grids is None:
        grids = _GRID_CACHE[size] = _Grids(size)
    # Textured background: a vertical colour gradient plus per-pixel noise, so the scene is not trivially flat.
    # (The draw order of the random stream is part of the dataset's definition: keep it.)
    base = rng.uniform(70, 170, size=3)
    tilt = rng.uniform(-40, 40, size=3)
    gradient = tilt * grids.rows[..., None] + base  # [H, 1, 3] float64
    background = rng.normal(0, 12, (size, size, 3))
    background += gradient
    np.clip(background, 0, 255, out=background)
    image = Image.fromarray(background.astype(np.uint8), "RGB")
    image_draw = ImageDraw.Draw(image)

    count = int(rng.integers(1, max_objects + 1))
    depths = np.sort(rng.uniform(*SHAPE_DEPTH, size=count))[::-1]  # drawn later = nearer
    id_image = Image.new("L", (size, size), 0)  # 0 = background, i + 1 = object i, later objects on top
    id_draw = ImageDraw.Draw(id_image)
    objects, footprints = [], []
    for i in range(count):
        kind = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        radius = float(rng.uniform(0.1, 0.3)) * size
        cx, cy = (float(v) * size for v in rng.uniform(0.15, 0.85, size=2))
        angle = float(rng.uniform(0, 2 * math.pi))
        _draw_shape(image_draw, kind, cx, cy, radius, angle, COLOURS[colour])
        _draw_shape(id_draw, kind, cx, cy, radius, angle, i + 1)
        if count > 1:  # the whole footprint, for the "in front of" relations
            footprint = Image.new("1", (size, size), 0)
            _draw_shape(ImageDraw.Draw(footprint), kind, cx, cy, radius, angle, 1)
            footprints.append(np.asarray(footprint))
        objects.append(
            {
                "class": kind,
                "colour": colour,
                "centre": (cx / size, cy / size),
                "depth": float(depths[i]),
                "order": i,
            }
        )
    ids = np.asarray(id_image)

    class_of = np.array([0] + [SHAPE_CLASSES.index(o["class"]) + 1 for o in objects], np.uint8)
    depth_of = np.concatenate([[0.0], depths]).astype(np.float32)
    shape_pixels = ids > 0
    segmentation = class_of[ids]
    depth = np.where(shape_pixels, depth_of[ids], grids.background_depth)

    visible_counts = np.bincount(ids.ravel(), minlength=count + 1)
    for i, obj in enumerate(objects):
        obj["visible"] = float(visible_counts[i + 1]) / (size * size)
    visible = [o for o in objects if o["visible"] > MIN_VISIBLE]
    if not visible:  # cannot happen for the top shape at sane sizes, but stay safe
        visible = objects[-1:]
    # Occlusion: a later-drawn object is in front of an earlier one when their footprints really overlap.
    described = {o["order"] for o in visible}
    for obj in objects:
        obj["in_front_of"] = []
    for i, front in enumerate(objects):
        for j, back in enumerate(objects[:i]):
            if i in described and j in described and bool((footprints[i] & footprints[j]).any()):
                front["in_front_of"].append(back)
    main = max(visible, key=lambda o: o["visible"])
    sample = {
        "__key__": f"builtin-{seed}-{index:08d}",
        "image": image,
        "web_caption": _web_caption(main, rng, caption_noise),
        "synthetic_captions": [
            {"text": _short_caption(visible), "template": "short", "model": "builtin"},
            {"text": _detailed_caption(visible), "template": "detailed", "model": "builtin"},
        ],
        "segmentation": segmentation,
        "depth": depth,
        "labels": [int(c) for c in np.flatnonzero(np.bincount(segmentation.ravel(), minlength=2)[1:]) + 1],
        "main_label": SHAPE_CLASSES.index(main["class"]) + 1,
        "objects": [
            {
                **{k: v for k, v in o.items() if k != "in_front_of"},
                "in_front_of": [b["order"] for b in o["in_front_of"]],
            }
            for o in visible
        ],
    }
    if with_normals:
        normals = np.empty((size, size, 3), np.float32)
        normals[:] = grids.background_normal
        normals[shape_pixels] = (0.0, 0.0, 1.0)  # fronto-parallel planes face the viewer
        sample["normals"] = normals
    return sample


def _web_caption(main: dict, rng: np.random.Generator, noise: float) -> str:
    colour = main["colour"]
    if rng.random() < 0.3 * noise:  # a wrong (random) colour
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    options = [
        f"{colour} {main['class']}",
        f"{_article(main['class'])} {main['class']}",
        f"{main['class']} picture",
        f"the {colour} {main['class']}",
    ]
    caption = options[int(rng.integers(len(options)))]
    if rng.random() < 0.5 * noise:
        filler = FILLERS[int(rng.integers(len(FILLERS)))].format(n=int(rng.integers(1000, 9999)))
        caption = f"{caption} {filler}" if rng.random() < 0.5 else f"{filler} {caption}"
    if rng.random() < 0.15 * noise:  # sometimes the alt-text says nothing about the content
        caption = FILLERS[int(rng.integers(len(FILLERS)))].format(n=int(rng.integers(1000, 9999)))
    return caption


def _short_caption(visible: list[dict]) -> str:
    parts = [
        f"{_article(o['colour'])} {o['colour']} {o['class']}"
        for o in sorted(visible, key=lambda o: -o["visible"])
    ]
    return _join(parts) + "."


def _detailed_caption(visible: list[dict]) -> str:
    sentences = []
    for obj in sorted(visible, key=lambda o: -o["visible"]):
        col = min(int(obj["centre"][0] * 3), 2)
        row = min(int(obj["centre"][1] * 3), 2)
        size_word = _size_word(obj["visible"])
        text = f"{_article(size_word)} {size_word} {obj['colour']} {obj['class']} {POSITIONS[row][col]}"
        if obj["in_front_of"]:
            behind = obj["in_front_of"][0]
            text += f", in front of the {behind['colour']} {behind['class']}"
        sentences.append(text)
    if len(visible) >= 2:
        left, right = sorted(visible[:2], key=lambda o: o["centre"][0])
        sentences.append(
            f"the {left['colour']} {left['class']} is left of the {right['colour']} {right['class']}"
        )
    return ". ".join(s[0].upper() + s[1:] for s in sentences) + "."


def _check(image_size: int, caption_noise: float, max_objects: int) -> None:
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 0.0 <= caption_noise <= 1.0:
        raise ValueError(f"caption_noise must lie in [0, 1], got {caption_noise}")
    if not 1 <= max_objects <= 255:
        raise ValueError(f"max_objects must lie in [1, 255], got {max_objects}")


class BuiltinShapes(Dataset):
    """Map-style dataset of procedural shape images; ``dataset[i]`` is a sample dict (see module docstring).

    ``caption_noise`` in [0, 1] scales how often the web caption has a wrong colour, filler text, or nothing
    about the content (0 = clean terse captions; 0.5 = default, moderate)."""

    def __init__(
        self,
        num_samples: int = 2048,
        image_size: int = 112,
        seed: int = 0,
        caption_noise: float = 0.5,
        max_objects: int = 4,
        with_normals: bool = False,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        _check(image_size, caption_noise, max_objects)
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = seed
        self.caption_noise = caption_noise
        self.max_objects = max_objects
        self.with_normals = with_normals
        self.class_names = SHAPE_CLASSES

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        return make_sample(
            index, self.seed, self.image_size, self.caption_noise, self.max_objects, self.with_normals
        )


def generate_samples(
    seed: int = 0,
    image_size: int = 112,
    caption_noise: float = 0.5,
    start: int = 0,
    stop: int | None = None,
    step: int = 1,
    max_objects: int = 4,
    with_normals: bool = False,
) -> Iterator[dict]:
    """Samples ``start, start + step, ...`` (up to ``stop``, or endlessly when None) of the dataset with
    ``seed``: the same samples as ``BuiltinShapes(..., seed=seed)[i]``."""
    _check(image_size, caption_noise, max_objects)
    index = start
    while stop is None or index < stop:
        yield make_sample(index, seed, image_size, caption_noise, max_objects, with_normals)
        index += step


class BuiltinShapesStream(IterableDataset):
    """The procedural dataset as a stream (``num_samples=None``: endless), split by rank and DataLoader worker:
    global index ``i`` goes to the reader ``i % (world_size * workers)``, so no index is produced twice."""

    def __init__(
        self,
        num_samples: int | None = None,
        image_size: int = 112,
        seed: int = 0,
        caption_noise: float = 0.5,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        max_objects: int = 4,
        with_normals: bool = False,
    ) -> None:
        super().__init__()
        _check(image_size, caption_noise, max_objects)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples, self.image_size, self.seed = num_samples, image_size, seed
        self.caption_noise, self.rank, self.world_size, self.start = caption_noise, rank, world_size, start
        self.max_objects, self.with_normals = max_objects, with_normals

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        readers = self.world_size * workers
        first = self.start + self.rank * workers + worker
        stop = None if self.num_samples is None else self.start + self.num_samples
        return generate_samples(
            self.seed,
            self.image_size,
            self.caption_noise,
            first,
            stop,
            readers,
            self.max_objects,
            self.with_normals,
        )


__all__ = [
    "COLOURS",
    "COLOUR_NAMES",
    "SHAPE_CLASSES",
    "BuiltinShapes",
    "BuiltinShapesStream",
    "generate_samples",
    "make_sample",
]
