"""Inputs of the captioning pipeline, split into units of work, and the writers of its outputs.

A unit is one input tar shard, or a chunk of ``chunk_size`` images of an image folder. Samples are read as
raw members (name, tar header, bytes) so that output shards can copy them unchanged; images are decoded
separately (``decode_image``), and every problem becomes a named reason on the sample, never an exception.

Self-contained on purpose (tarfile + webdataset's ``gopen``/brace expansion): the training-side readers in
``open_tips.data`` evolve independently. The member grouping and the failure reasons follow the same
conventions (docs/architecture.md): a key is a member name up to the first dot of its file name, members of a
sample are consecutive, a ``<key>.txt`` member stands in for a missing ``web_caption``.
"""

from __future__ import annotations

import copy
import glob
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's split of a member name
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar")


@dataclass
class FolderItem:
    relative: str  # image path relative to the folder
    key: str
    meta: dict[str, Any] | None = None  # its captions.jsonl record without "image", if any
    error: str | None = None  # e.g. a malformed captions.jsonl line


@dataclass
class Unit:
    """One unit of work. ``name`` names its outputs (``<name>.tar`` / ``<name>.jsonl``) and its done marker."""

    name: str
    source: str  # a shard URL / path, or a folder
    items: list[FolderItem] | None = None  # folder units only

    @property
    def is_folder(self) -> bool:
        return self.items is not None

    def size_hint(self) -> int | None:
        """Number of samples, when cheap to know (folder chunks, local uncompressed shards: headers only)."""
        if self.items is not None:
            return len(self.items)
        if not self.source.endswith(".tar") or not os.path.isfile(self.source):
            return None
        try:
            with tarfile.open(self.source, "r:") as archive:  # seeks from header to header
                return len(
                    {
                        m.group(1)
                        for info in archive
                        if info.isreg() and (m := _KEY_EXT.match(info.name)) is not None
                    }
                )
        except _ARCHIVE_ERRORS:
            return None


@dataclass
class RawSample:
    key: str
    members: list[tuple[tarfile.TarInfo, bytes]] = field(default_factory=list)  # in archive order
    meta_override: dict[str, Any] | None = None  # folder samples: metadata from captions.jsonl
    source_path: str | None = None  # folder samples: the image's relative path
    error: str | None = None  # a reason that makes the sample unusable (copied through unchanged)
    detail: str = ""

    def member(self, ext: str) -> bytes | None:
        for info, data in self.members:
            if _ext(info.name) == ext:
                return data
        return None

    def image_member(self) -> tuple[str, bytes] | None:
        exts = {_ext(info.name): data for info, data in self.members}
        for ext in IMAGE_EXTENSIONS:
            if ext in exts:
                return ext, exts[ext]
        return None


def _ext(name: str) -> str:
    match = _KEY_EXT.match(name)
    return match.group(2).lower() if match else ""


def _expand(item: str) -> list[str]:
    """Shard URLs of one ``--input`` entry: ``::``-separated lists, brace patterns, and local globs."""
    urls: list[str] = []
    for part in item.split("::"):
        for url in braceexpand.braceexpand(part):
            if not re.match(r"^[a-z]+:", url) and any(c in url for c in "*?["):
                matches = sorted(glob.glob(url))
                if not matches:
                    raise FileNotFoundError(f"no file matches {url}")
                urls.extend(matches)
            else:
                urls.append(url)
    return urls


def unit_name_for(url: str) -> str:
    """``.../train-000003.tar`` (or a ``pipe:`` command ending in it) -> ``train-000003``."""
    last = url.split()[-1] if url.startswith("pipe:") else url
    base = last.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    for suffix in _TAR_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _folder_items(folder: Path) -> list[FolderItem]:
    """Images of a folder: the ``captions.jsonl`` entries if the file exists (the contract's folder layout),
    else every image file below the folder, sorted."""
    jsonl = folder / "captions.jsonl"
    items: list[FolderItem] = []
    if jsonl.is_file():
        with jsonl.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    relative = record["image"]
                    if not isinstance(record, dict) or not isinstance(relative, str):
                        raise TypeError
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    items.append(
                        FolderItem(
                            f"captions.jsonl:{number}",
                            f"captions_jsonl_line{number:08d}",
                            error=f"malformed_jsonl: {type(err).__name__}",
                        )
                    )
                    continue
                items.append(FolderItem(relative, "", {k: v for k, v in record.items() if k != "image"}))
    else:
        items = [
            FolderItem(str(p.relative_to(folder)), "")
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
        ]
    used: set[str] = set()
    for item in items:
        if item.error is None:
            # webdataset keys end at the first dot of the file name: keep dots out of the stem.
            parent, _, name = str(Path(item.relative).with_suffix("")).rpartition("/")
            base = (f"{parent}/" if parent else "") + name.replace(".", "_")
            key, n = base, 1
            while key in used:
                key, n = f"{base}_{n}", n + 1
            item.key = key
        used.add(item.key)
    return items


def discover_units(inputs: list[str], chunk_size: int = 512) -> list[Unit]:
    """All units of a job, in a fixed order (inputs as given; globs sorted): every rank computes the same list,
    so ``unit i -> rank i % world_size`` splits the job without overlap."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    units: list[Unit] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            folder_items = _folder_items(path)
            for index, start in enumerate(range(0, len(folder_items), chunk_size)):
                units.append(
                    Unit(
                        f"{path.resolve().name}-{index:06d}",
                        str(path),
                        folder_items[start : start + chunk_size],
                    )
                )
        else:
            units.extend(Unit(unit_name_for(url), url) for url in _expand(item))
    seen: dict[str, str] = {}
    for unit in units:
        if unit.name in seen:  # outputs and done markers are named after units
            raise ValueError(
                f"inputs {seen[unit.name]} and {unit.source} would both write {unit.name}.tar; "
                "caption them into different --output directories"
            )
        seen[unit.name] = unit.source
    if not units:
        raise ValueError(f"no input shards or images found in {inputs}")
    return units


# ----------------------------------------------------------------------------------------------- reading


def _read_tar(url: str) -> Iterator[RawSample]:
    """Consecutive members grouped by key. Archive damage ends the shard: the sample being read gets
    ``truncated_tar_member``; an archive that cannot be opened at all raises ``UnreadableUnit``."""
    from webdataset.gopen import gopen

    try:
        stream = gopen(url, "rb")
        archive = tarfile.open(fileobj=stream, mode="r|*")
    except Exception as err:  # noqa: BLE001 - missing file, failing pipe: command, not a tar, ...
        raise UnreadableUnit(f"{type(err).__name__}: {err}") from err
    current: RawSample | None = None
    try:
        for info in archive:
            if not info.isreg():
                continue
            match = _KEY_EXT.match(info.name)
            if match is None or Path(info.name).name.startswith("__"):
                continue  # webdataset metadata members such as __index__
            key = match.group(1)
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = RawSample(key)
            try:
                handle = archive.extractfile(info)
                data = handle.read() if handle is not None else b""
            except _ARCHIVE_ERRORS as err:
                data, reason = b"", f"{type(err).__name__}: {err}"
            else:
                reason = f"{info.name}: {len(data)} of {info.size} bytes"
            if len(data) != info.size:
                current.error, current.detail = "truncated_tar_member", reason
                yield current
                current = None
                raise ArchiveDamage(reason)
            current.members.append((copy.copy(info), data))
    except ArchiveDamage:
        return
    except _ARCHIVE_ERRORS as err:
        if current is None:
            raise UnreadableUnit(f"{type(err).__name__}: {err}") from err
        current.error, current.detail = "corrupt_shard", f"{type(err).__name__}: {err}"
        yield current  # copied through as far as it was read, with its reason
        current = None
    finally:
        try:
            archive.close()
            stream.close()
        except Exception:  # noqa: BLE001 - e.g. a pipe: command exiting non-zero after being cut short
            pass
    if current is not None:
        yield current


def _read_folder(unit: Unit) -> Iterator[RawSample]:
    root = Path(unit.source)
    assert unit.items is not None
    for item in unit.items:
        if item.error is not None:
            reason, _, detail = item.error.partition(": ")
            yield RawSample(item.key, error=reason, detail=detail, source_path=item.relative)
            continue
        path = root / item.relative
        sample = RawSample(item.key, meta_override=item.meta or {}, source_path=item.relative)
        try:
            data = path.read_bytes()
        except OSError as err:
            sample.error, sample.detail = "missing_image", f"{item.relative}: {type(err).__name__}"
            yield sample
            continue
        info = tarfile.TarInfo(f"{item.key}.{path.suffix.lower().lstrip('.') or 'jpg'}")
        info.size, info.mtime, info.mode = len(data), int(path.stat().st_mtime), 0o644
        sample.members.append((info, data))
        yield sample


def read_unit(unit: Unit) -> Iterator[RawSample]:
    return _read_folder(unit) if unit.is_folder else _read_tar(unit.source)


class UnreadableUnit(Exception):
    """A unit whose input cannot be opened at all (not marked done: a restart tries it again)."""


class ArchiveDamage(Exception):
    pass


# ---------------------------------------------------------------------------------------------- decoding


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit / float greyscale
        array = np.nan_to_num(np.asarray(image, dtype=np.float32))
        scale = (
            255.0
            if mode == "F" and float(array.max(initial=0.0)) <= 1.0
            else (1.0 if mode == "F" else 1 / 257)
        )
        return Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")  # transparency over white, as a browser shows it
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


class BadImage(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def decode_image(data: bytes, size_hint: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes -> RGB image (EXIF orientation applied), or ``BadImage(corrupt_image | image_too_large | ...)``.

    ``size_hint``: the captioner's input side. JPEGs are then decoded at a reduced scale whose sides stay at
    least twice that (libjpeg's DCT scaling): the processor downsizes anyway, and full-size decoding of large
    photos otherwise dominates the CPU time of small captioners."""
    # No warnings.catch_warnings() here: this runs in the reading thread, and catch_warnings swaps the
    # process-wide filter list, racing with the main thread's.
    try:
        image = Image.open(io.BytesIO(data))
        if image.size[0] * image.size[1] > max_pixels:
            raise BadImage("image_too_large", f"{image.size[0]}x{image.size[1]}")
        if size_hint and image.format == "JPEG":
            image.draft("RGB", (2 * size_hint, 2 * size_hint))
        image.load()
    except BadImage:
        raise
    except Image.DecompressionBombError as err:
        raise BadImage("image_too_large", str(err)) from err
    except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise BadImage("corrupt_image", f"{type(err).__name__}: {err}") from err
    if min(image.size) < 2:
        raise BadImage("image_too_small", f"{image.size[0]}x{image.size[1]}")
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not lose a good image
        pass
    try:
        return _to_rgb(image)
    except (ValueError, OSError, TypeError) as err:
        raise BadImage("unsupported_mode", f"{image.mode}: {err}") from err


# ----------------------------------------------------------------------------------------------- writing


class ShardWriter:
    """Writes samples to a tar file: original members byte for byte (names, headers), the ``.json`` member
    replaced only for samples that got new captions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "wb")
        self.archive = tarfile.open(fileobj=self.handle, mode="w", format=tarfile.GNU_FORMAT)

    def write(self, raw: RawSample, new_json: bytes | None) -> None:
        replaced = False
        for info, data in raw.members:
            if new_json is not None and _ext(info.name) == "json":
                info, data, replaced = copy.copy(info), new_json, True
                info.size = len(data)
            self.archive.addfile(info, io.BytesIO(data))
        if new_json is not None and not replaced:  # the sample had no .json: add one after its members
            info = tarfile.TarInfo(f"{raw.key}.json")
            info.size, info.mode = len(new_json), 0o644
            info.mtime = raw.members[0][0].mtime if raw.members else 0
            self.archive.addfile(info, io.BytesIO(new_json))

    def close(self) -> None:
        self.archive.close()
        _sync_close(self.handle)


class JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        _sync_close(self.handle)


def _sync_close(handle: Any) -> None:
    # fsync before the rename that publishes the file: a crash must not leave a complete-looking empty file.
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def atomic_write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
