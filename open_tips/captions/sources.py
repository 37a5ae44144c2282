"""Inputs of the captioning pipeline, split into units of work, and the writers of its outputs.

A unit is one input tar shard, or a chunk of ``chunk_size`` images of an image folder. Samples are read as
raw members (name, tar header, bytes) so that output shards can copy them unchanged; images are decoded
separately (``decode_image``), and every problem becomes a named reason on the sample, never an exception.

Reading, decoding and listing are training's own (open_tips.data): the tar reader and member-name split of
``data.shards``, the image decoding and skip reasons of ``data.decode`` (an image training would drop, e.g. as
too small, is not captioned and carries the same reason), the folder listing and ``captions.jsonl`` reader of
``data.folder``; outputs are published by open_tips.utils.atomic. Only the grouping into raw members (kept
for byte-identical copies) and the unit bookkeeping live here.
"""

from __future__ import annotations

import copy
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from open_tips.data import decode as _decode
from open_tips.data.decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, SkipSample
from open_tips.data.folder import image_files, jsonl_lines
from open_tips.data.shards import ShardDamage, expand_urls, iter_tar_members, safe_key, split_member_name
from open_tips.utils.atomic import atomic_write_json

MAX_PIXELS = DEFAULT_MAX_PIXELS
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst", ".tar")
# A failed decode (data.decode's SkipSample: ``reason``, ``detail``), under the captioner's older name.
BadImage = SkipSample


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
                        split[0]
                        for info in archive
                        if info.isreg() and (split := split_member_name(info.name)) is not None
                    }
                )
        except Exception:  # noqa: BLE001 - only a hint: a damaged archive is reported when it is read
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
    split = split_member_name(name)
    return split[1] if split else ""


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
    else every image file below the folder, sorted (data.folder's listing, as training reads folders)."""
    jsonl = folder / "captions.jsonl"
    items: list[FolderItem] = []
    if jsonl.is_file():
        for number, record in jsonl_lines(jsonl):
            relative = record.get("image") if isinstance(record, dict) else None
            if not isinstance(relative, str):
                error = record.detail if isinstance(record, SkipSample) else "no image path"
                items.append(
                    FolderItem(
                        f"captions.jsonl:{number}",
                        f"captions_jsonl_line{number:08d}",
                        error=f"malformed_jsonl: {error}",
                    )
                )
                continue
            items.append(FolderItem(relative, "", {k: v for k, v in record.items() if k != "image"}))
    else:
        items = [FolderItem(relative, "") for relative in image_files(folder)]
    used: set[str] = set()
    for item in items:
        if item.error is None:
            # webdataset keys end at the first dot of the file name: data.shards' key rule, as make-shards
            item.key = safe_key(Path(item.relative).with_suffix("").as_posix(), used)
        else:
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
            units.extend(Unit(unit_name_for(url), url) for url in expand_urls(item, glob_local=True))
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
    """Consecutive members grouped by key (data.shards' reader). Archive damage ends the shard: the sample being
    read gets ``truncated_tar_member`` or ``corrupt_shard`` and is copied through as far as it was read; an
    archive that cannot be opened at all raises ``UnreadableUnit``."""
    current: RawSample | None = None
    try:
        for key, _ext_name, info, data in iter_tar_members(url):
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = RawSample(key)
            current.members.append((copy.copy(info), data))
    except ShardDamage as damage:
        if damage.reason == "unreadable_shard":
            raise UnreadableUnit(damage.detail) from damage
        if current is None or (damage.key is not None and current.key != damage.key):
            if current is not None:
                yield current
            current = RawSample(damage.key or "?")
        current.error, current.detail = damage.reason, damage.detail
        yield current
        return
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


# ---------------------------------------------------------------------------------------------- decoding


def decode_image(data: bytes, size_hint: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes -> RGB image as training decodes it (data.decode.decode_image, same minimum side), or
    ``BadImage`` (= SkipSample) with training's reason.

    ``size_hint``: the captioner's input side. JPEGs are then decoded at a reduced scale whose sides stay at
    least twice that (libjpeg's DCT scaling): the processor downsizes anyway, and full-size decoding of large
    photos otherwise dominates the CPU time of small captioners. Runs in the reading thread, so the global
    warning filters are left alone."""
    return _decode.decode_image(
        data, max_pixels, draft_side=2 * size_hint if size_hint else None, in_thread=True
    )


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
    # The file is published by open_tips.utils.atomic (fsync, rename, directory fsync) after this.
    handle.flush()
    handle.close()


__all__ = [
    "BadImage",
    "FolderItem",
    "JsonlWriter",
    "RawSample",
    "ShardWriter",
    "Unit",
    "UnreadableUnit",
    "atomic_write_json",
    "decode_image",
    "discover_units",
    "read_unit",
    "unit_name_for",
]
