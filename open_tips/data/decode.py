"""Robust decoding of one training sample: every failure is a named reason, never an uncaught exception.

``decode_image`` and ``parse_metadata`` raise ``SkipSample(reason)``; readers catch it, count the reason in a
``SkipCounter`` and go on. Reasons used across open_tips.data:

- ``corrupt_image``: undecodable or truncated image bytes
- ``image_too_large``: more pixels than the decompression-bomb limit (``max_pixels``)
- ``image_too_small``: a side shorter than ``min_side`` pixels
- ``unsupported_mode``: a pixel format that cannot be converted to RGB
- ``missing_image``: no image member / file
- ``missing_json``: no metadata (and no ``.txt`` caption) in a shard sample
- ``malformed_json``: metadata that is not a JSON object
- ``missing_caption``: no or empty ``web_caption``
- ``truncated_tar_member``, ``corrupt_shard``, ``unreadable_shard``: damaged archives (see shards.py)
"""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2.functional import pil_to_tensor

from open_tips.data.captions import normalise_synthetic

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default decompression-bomb threshold (Image.MAX_IMAGE_PIXELS)
MIN_SIDE = 8

log = logging.getLogger("open_tips.data")

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec (a separate package) and warns on every
# call; decode_jpeg is still libjpeg-turbo straight into a tensor, the fastest decoder torchvision ships.
# Without it (a later torchvision), decode_image_tensor uses PIL.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)
try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - torchvision without its codecs
    decode_jpeg = None


class SkipSample(Exception):
    """A sample that must be skipped; ``reason`` is one of the names in the module docstring."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale (PNG/TIFF): map 0..65535 to 0..255 (keeps absolute brightness, unlike a min-max).
        array = np.asarray(image).astype(np.float32)
        return Image.fromarray(np.clip(array / 257.0, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if mode == "F":  # float images: 0..1 or 0..255 by their range
        array = np.nan_to_num(np.asarray(image, dtype=np.float32))
        scale = 255.0 if float(array.max(initial=0.0)) <= 1.0 else 1.0
        return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        # Transparency over white, as a browser shows alt-texted web images (a black fill would invent content).
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")  # RGB, L, 1, P, CMYK, YCbCr, ...


def _open(data: bytes, max_pixels: int | None, draft_side: int | None) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise SkipSample("image_too_large", f"{width}x{height} > {max_pixels} pixels")
    if draft_side and image.format == "JPEG":
        image.draft("RGB", (draft_side, draft_side))
    image.load()  # decodes now: truncated or damaged data fails here
    return image


def decode_image(
    data: bytes,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
    draft_side: int | None = None,
    in_thread: bool = False,
) -> Image.Image:
    """Encoded bytes -> RGB PIL image, or SkipSample. Training and the captioner both decode with this.

    Any mode (CMYK, I;16, P, RGBA, LA, L, 1, ...) is converted to RGB; the EXIF orientation is applied. The size
    is checked against ``max_pixels`` from the header, before any pixel is decoded (None = no limit of ours;
    PIL's own hard error above 2 x Image.MAX_IMAGE_PIXELS still applies and is counted the same way).
    ``draft_side``: JPEGs are decoded at a reduced DCT scale whose sides stay at least this long (for callers
    that downsize anyway, such as a captioner's processor). ``in_thread``: leave the process-wide warning
    filters alone (``warnings.catch_warnings`` is not thread-safe), at the cost of PIL's
    DecompressionBombWarning for images above its own limit."""
    try:
        if in_thread:
            image = _open(data, max_pixels, draft_side)
        else:
            with warnings.catch_warnings():
                # Our own limit replaces PIL's warning, so that a limit above PIL's default is honoured.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = _open(data, max_pixels, draft_side)
    except SkipSample:
        raise
    except Image.DecompressionBombError as err:
        raise SkipSample("image_too_large", str(err)) from err
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds (OSError, SyntaxError, ValueError, ...)
        raise SkipSample("corrupt_image", f"{type(err).__name__}: {err}") from err
    if min(image.size) < min_side:
        raise SkipSample("image_too_small", f"{image.size[0]}x{image.size[1]}")
    try:
        ImageOps.exif_transpose(image, in_place=True)  # photos shot rotated: show them as a viewer would
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not lose an otherwise good image
        pass
    try:
        return _to_rgb(image)
    except (ValueError, OSError, TypeError) as err:
        raise SkipSample("unsupported_mode", f"{image.mode}: {err}") from err


# RandomResizedCrop's default aspect-ratio range is 3/4 .. 4/3: a box of area fraction s has sides of at
# least sqrt(s * area * 3/4).
_MIN_ASPECT = 3.0 / 4.0
DCT_SCALES = (8, 4, 2)  # libjpeg decodes at 1/8, 1/4 or 1/2 size almost for free (scaled IDCT)


def jpeg_scale_for(width: int, height: int, crops: Sequence[tuple[int, float]]) -> int:
    """The largest JPEG downscale (1, 2, 4 or 8) at which every box that ``RandomResizedCrop(size,
    scale=(min_scale, ...))`` can draw on a ``width`` x ``height`` image still has at least ``size`` pixels on
    both sides, for each ``(size, min_scale)`` in ``crops``: decoding that much smaller changes no crop from a
    downscale into an upscale. Drawn boxes have sides >= sqrt(min_scale * area * 3/4); the fallback box
    (the whole image, cut to the aspect range) has its short side >= the image's."""
    area, short = width * height, min(width, height)
    smallest = min(
        (min(math.sqrt(min_scale * area * _MIN_ASPECT), short) / size for size, min_scale in crops),
        default=1.0,
    )
    return next((d for d in DCT_SCALES if smallest >= d), 1)


def _decode_jpeg_tensor(
    data: bytes, max_pixels: int | None, min_side: int, crops: Sequence[tuple[int, float]] | None
):
    """The libjpeg-turbo path of ``decode_image_tensor``; None where PIL should decide instead."""
    if decode_jpeg is None or data[:3] != b"\xff\xd8\xff" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None  # not a JPEG, or truncated (no end marker): PIL reports it as PIL would
    try:
        header = Image.open(io.BytesIO(data))  # lazy: the header only
        width, height, mode = header.width, header.height, header.mode
    except Exception:  # noqa: BLE001 - the PIL path names the reason
        return None
    if mode not in ("RGB", "L"):
        return None  # CMYK / YCCK and friends: PIL's conversion
    if max_pixels is not None and width * height > max_pixels:
        raise SkipSample("image_too_large", f"{width}x{height} > {max_pixels} pixels")
    scale = jpeg_scale_for(width, height, crops) if crops else 1
    if scale > 1:
        # torchvision's decode_jpeg has no scaled decoding; PIL's draft mode is libjpeg's scaled IDCT.
        # Area and short side do not change with the EXIF rotation, so the scale holds after it.
        return pil_to_tensor(
            decode_image(data, max_pixels, min_side, draft_side=-(-min(width, height) // scale))
        )
    try:
        pixels = decode_jpeg(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.RGB,
            apply_exif_orientation=True,
        )
    except Exception:  # noqa: BLE001 - damaged data: the PIL path names the reason
        return None
    if min(pixels.shape[-2:]) < min_side:
        raise SkipSample("image_too_small", f"{pixels.shape[-1]}x{pixels.shape[-2]}")
    return pixels


def decode_image_tensor(
    data: bytes,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = MIN_SIDE,
    crops: Sequence[tuple[int, float]] | None = None,
):
    """Encoded bytes -> uint8 RGB tensor [3, H, W], or SkipSample; the training loader's decoder.

    Complete RGB / greyscale JPEGs go through ``torchvision.io.decode_jpeg`` (libjpeg-turbo straight into a
    tensor, EXIF orientation applied; no PIL image, no copy into a tensor afterwards); everything else
    (other formats, CMYK, truncated or damaged files) through ``decode_image``, so the skip reasons and
    limits are the same as there. Pixels agree with PIL's decoding up to the decoders' IDCT rounding.

    ``crops``: the ``(output size, min area fraction)`` of the random resized crops the image is for. A JPEG
    large enough for them is decoded at 1/2, 1/4 or 1/8 size (``jpeg_scale_for``), which costs a fraction
    of a full decode; every crop is still a downscale. For the B/14 recipe (98 px local crops from 5 % of
    the image) that needs about 1 megapixel: COCO's 640 x 480 decodes at full size, 1280 x 960 at 1/2."""
    pixels = _decode_jpeg_tensor(data, max_pixels, min_side, crops)
    if pixels is not None:
        return pixels
    return pil_to_tensor(decode_image(data, max_pixels, min_side))


def load_json_object(data: bytes | str) -> dict:
    """JSON text that must be an object, or SkipSample("malformed_json")."""
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SkipSample("malformed_json", str(err)) from err
    if not isinstance(meta, dict):
        raise SkipSample("malformed_json", f"top level is {type(meta).__name__}, not an object")
    return meta


def parse_metadata(data: bytes | str | dict, fallback_caption: bytes | str | None = None) -> dict:
    """JSON metadata -> {"web_caption": str, "synthetic_captions": [dict], ...other fields}, or SkipSample.

    ``fallback_caption`` (e.g. a shard's ``.txt`` member, as img2dataset writes) stands in for a missing
    ``web_caption``."""
    meta = dict(data) if isinstance(data, dict) else load_json_object(data)
    web = meta.get("web_caption")
    if (not isinstance(web, str) or not web.strip()) and fallback_caption is not None:
        web = (
            fallback_caption.decode("utf-8", "replace")
            if isinstance(fallback_caption, bytes)
            else fallback_caption
        )
    if not isinstance(web, str) or not web.strip():
        raise SkipSample("missing_caption", "web_caption missing or empty")
    meta["web_caption"] = web.strip()
    meta["synthetic_captions"] = normalise_synthetic(meta.get("synthetic_captions"))
    return meta


class SkipCounter(Counter):
    """Skipped samples per reason. Logs a warning the first time each reason occurs (per instance, i.e. per
    reader process), with the sample's key, so a bad source is visible without flooding the log."""

    def add(self, reason: str, key: str, detail: str = "") -> None:
        if self[reason] == 0:
            log.warning(
                "skipping sample %s: %s %s (further %r skips are only counted)", key, reason, detail, reason
            )
        self[reason] += 1


__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "SkipCounter",
    "SkipSample",
    "decode_image",
    "load_json_object",
    "parse_metadata",
]
