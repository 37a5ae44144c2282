"""Robust decoding of one training sample: every failure is a named reason, never an exception.

Reasons: ``corrupt_image`` (undecodable or truncated), ``image_too_large`` (decompression-bomb limit),
``image_too_small``, ``missing_image``, ``malformed_json``, ``missing_caption`` (no/empty web caption),
``missing_json``.
"""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter

from PIL import Image

from open_tips.data.captions import normalise_synthetic

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold
MIN_SIDE = 8


class SkipSample(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Bytes -> RGB PIL image. Any mode (CMYK, I;16, P, RGBA, LA, L, 1) is converted to RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise SkipSample("image_too_large", f"{width}x{height}")
            image.load()
    except SkipSample:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise SkipSample("image_too_large", str(err)) from err
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for damaged files
        raise SkipSample("corrupt_image", f"{type(err).__name__}: {err}") from err
    if min(image.size) < MIN_SIDE:
        raise SkipSample("image_too_small", f"{image.size[0]}x{image.size[1]}")
    if image.mode == "I;16" or image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16/32-bit greyscale: rescale to 8 bits rather than clipping
        import numpy as np

        array = np.asarray(image, dtype=np.float32)
        high = float(array.max()) or 1.0
        image = Image.fromarray((array / high * 255.0).clip(0, 255).astype("uint8"), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def parse_metadata(data: bytes | str | dict) -> dict:
    """JSON metadata -> {"web_caption": str, "synthetic_captions": [dict], ...}; raises SkipSample."""
    if isinstance(data, dict):
        meta = dict(data)
    else:
        try:
            meta = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SkipSample("malformed_json", str(err)) from err
    if not isinstance(meta, dict):
        raise SkipSample("malformed_json", "top level is not an object")
    web = meta.get("web_caption")
    if not isinstance(web, str) or not web.strip():
        raise SkipSample("missing_caption", "web_caption missing or empty")
    meta["web_caption"] = web.strip()
    meta["synthetic_captions"] = normalise_synthetic(meta.get("synthetic_captions"))
    return meta


class SkipCounter(Counter):
    """Counts skipped samples per reason; logs the first occurrence of each reason."""

    def add(self, reason: str, key: str, detail: str = "") -> None:
        import logging

        if self[reason] == 0:
            logging.getLogger("open_tips.data").warning("skipping sample %s: %s %s", key, reason, detail)
        self[reason] += 1
