"""WebDataset tar shards: writing from samples, and robust reading split across ranks and DataLoader workers.

Format (docs/architecture.md): ``<key>.jpg`` (or another image extension) + ``<key>.json`` holding
``web_caption`` and ``synthetic_captions``; members of one sample are consecutive. A ``<key>.txt`` member (as
img2dataset writes) stands in for a missing ``web_caption``. URLs may be local paths, brace patterns
(``train-{000000..000099}.tar``), several patterns joined by ``::``, or anything webdataset's ``gopen`` opens
(``pipe:`` commands, ``file:``, ``http(s):``).

Reading never raises on bad data. Each bad sample is skipped and counted once, under one reason (see
open_tips.data.decode), in the reader's ``skipped`` counter; archive damage is counted as
``truncated_tar_member`` (a member's data ends early: that sample is dropped, and the rest of the shard is
unreachable), ``corrupt_shard`` (an unreadable header or compressed stream: the rest of the shard is lost)
or ``unreadable_shard`` (cannot be opened or yields nothing readable).

Skip counts across processes: DataLoader workers hold copies of the dataset, so their counters never reach
the main process. Each yielded sample therefore carries ``__skip_counts__ = {reader_id: running totals}``
(``reader_id`` = "shards:<rank>:<worker>"), stamped when it is yielded; the batch builder merges these into
the batch's ``skip_counts`` and the trainer keeps the latest totals per reader and sums them. Skips after a
reader's last yielded sample cannot travel this way; in the main process (``num_workers=0``) ``skipped`` is
always complete.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import braceexpand
import numpy as np
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.gopen import gopen

from open_tips.data.decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    SkipCounter,
    SkipSample,
    decode_image,
    decode_image_tensor,
    parse_metadata,
)
from open_tips.utils.atomic import publish

log = logging.getLogger(__name__)

# webdataset's own member-name split: the key is everything up to the first dot of the file name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META_MEMBER = re.compile(r"__[^/]*__($|/)")
_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)
_SCHEME = re.compile(r"^[a-z]+:")  # pipe:, file:, http(s):, ...


def expand_urls(urls: str | os.PathLike | Iterable[str], glob_local: bool = False) -> list[str]:
    """Brace-expands a pattern, a ``::``-separated list of patterns, or an iterable of patterns; keeps order.
    ``glob_local``: local paths with ``*?[`` are also globbed (sorted; no match is an error)."""
    if isinstance(urls, (str, os.PathLike)):
        urls = str(urls).split("::")
    out: list[str] = []
    for pattern in urls:
        for url in braceexpand.braceexpand(str(pattern)):
            if glob_local and not _SCHEME.match(url) and any(c in url for c in "*?["):
                matches = sorted(glob.glob(url))
                if not matches:
                    raise FileNotFoundError(f"no file matches {url}")
                out.extend(matches)
            else:
                out.append(url)
    if not out:
        raise ValueError("no shard URLs given")
    return out


def safe_key(key: str, used: set[str]) -> str:
    """``key`` made usable as a webdataset key: no dot, not in ``used`` (added to it)."""
    # A dot would move the key/extension split on reading; a repeated key would merge two samples.
    key = str(key).replace(".", "_") or "sample"
    candidate, n = key, 1
    while candidate in used:
        candidate, n = f"{key}_{n}", n + 1
    used.add(candidate)
    return candidate


def _encode(image: Image.Image | np.ndarray, image_format: str, quality: int) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG"}.get(image_format, image_format.upper())
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    image.convert("RGB").save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_shards(
    samples: Iterable[dict],
    output_pattern: str,
    max_per_shard: int = 1000,
    image_format: str = "jpg",
    quality: int = 95,
) -> list[str]:
    """Writes samples to ``output_pattern`` (a %-pattern such as ``dir/shard-%06d.tar``); returns the paths.

    A sample has ``image`` (PIL image, uint8 array, or already-encoded bytes with ``image_ext``), ``web_caption``,
    ``synthetic_captions``, optional ``__key__``; other JSON-able fields go into the ``.json`` member too
    (``__``-prefixed and non-JSON-able ones, such as ground-truth arrays, are left out). Each shard is written
    under a ``.tmp`` name and published when complete (open_tips.utils.atomic: fsync, rename, directory
    fsync), so a crash never leaves a truncated shard under a real name (why webdataset's TarWriter is used
    here rather than its ShardWriter)."""
    if max_per_shard < 1:
        raise ValueError(f"max_per_shard must be >= 1, got {max_per_shard}")
    Path(output_pattern % 0).parent.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    shard_index, in_shard, total = 0, 0, 0
    writer: wds.TarWriter | None = None
    tmp_path = ""
    used: set[str] = set()

    def finish() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            final = output_pattern % (shard_index - 1)
            publish(tmp_path, final)  # fsynced before and after the rename, like every other writer
            written.append(final)
            writer = None

    try:
        for sample in samples:
            if writer is None or in_shard >= max_per_shard:
                finish()
                tmp_path = output_pattern % shard_index + ".tmp"
                writer = wds.TarWriter(tmp_path)
                shard_index, in_shard, used = shard_index + 1, 0, set()
            image = sample["image"]
            if isinstance(image, (bytes, bytearray)):
                data, ext = bytes(image), str(sample.get("image_ext", image_format)).lower().lstrip(".")
            else:
                data, ext = _encode(image, image_format, quality), image_format
            meta = {
                k: v
                for k, v in sample.items()
                if k not in ("image", "image_ext") and not k.startswith("__") and _jsonable(v)
            }
            key = safe_key(sample.get("__key__") or f"{total:09d}", used)
            writer.write({"__key__": key, ext: data, "json": json.dumps(meta).encode()})
            in_shard, total = in_shard + 1, total + 1
        finish()
    except BaseException:
        if writer is not None:  # leave no partial shard behind, complete ones stay
            writer.close()
            Path(tmp_path).unlink(missing_ok=True)
        raise
    return written


def _jsonable(value: object) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def split_shards(urls: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """The shards of (rank, worker): round-robin over ranks, then over that rank's workers, so that across the
    job every shard is read exactly once per epoch."""
    return urls[rank::world_size][worker::num_workers]


def split_member_name(name: str) -> tuple[str, str] | None:
    """webdataset's split of a member name: (key, lower-cased extension); None for a name without a dot."""
    match = _KEY_EXT.match(name)
    return (match.group(1), match.group(2).lower()) if match else None


class ShardDamage(Exception):
    """Archive damage that ends a shard: ``reason`` is ``unreadable_shard``, ``corrupt_shard`` or
    ``truncated_tar_member`` (then ``key`` is the damaged member's key)."""

    def __init__(self, reason: str, detail: str, key: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.key = reason, detail, key


def iter_tar_members(url: str) -> Iterator[tuple[str, str, tarfile.TarInfo, bytes]]:
    """(key, extension, header, data) of each regular member of one shard, in archive order, webdataset's
    metadata members (``__index__`` ...) left out. The one tar reader of open_tips: training groups these into
    samples (``iter_tar_samples``), the captioner copies them byte for byte.

    Damage raises ShardDamage after the last good member: ``unreadable_shard`` (cannot be opened, or fails
    before its first member), ``corrupt_shard`` (an unreadable header or compressed stream later on),
    ``truncated_tar_member`` (a member's data ends early; nothing after it is reachable)."""
    try:
        stream = gopen(url, "rb")
    except Exception as err:  # noqa: BLE001 - missing file, bad scheme, failing command, ...
        raise ShardDamage("unreadable_shard", f"{type(err).__name__}: {err}") from err
    members = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isreg() or _META_MEMBER.match(info.name):
                    continue
                split = split_member_name(info.name)
                if split is None:
                    continue
                try:
                    handle = tar.extractfile(info)
                    data = handle.read() if handle is not None else b""
                except _ARCHIVE_ERRORS as err:
                    data, detail = None, f"{type(err).__name__}: {err}"
                else:
                    detail = f"{info.name}: {len(data)} of {info.size} bytes"
                if data is None or len(data) != info.size:
                    raise ShardDamage("truncated_tar_member", detail, key=split[0])
                members += 1
                yield split[0], split[1], info, data
    except ShardDamage:
        raise
    except _ARCHIVE_ERRORS as err:
        reason = "corrupt_shard" if members else "unreadable_shard"
        raise ShardDamage(reason, f"{type(err).__name__}: {err}") from err
    finally:
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - e.g. a pipe: command that exits non-zero after being cut short
            pass


def iter_tar_samples(url: str, skipped: SkipCounter) -> Iterator[dict]:
    """Raw samples ``{"__key__", "__url__", ext: bytes, ...}`` of one shard, grouping consecutive members by
    key; archive damage is counted in ``skipped`` (see the module docstring) and ends the shard quietly."""
    current: dict | None = None
    try:
        for key, ext, info, data in iter_tar_members(url):
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            if ext in current:  # the same key twice in a row: keep the first member
                log.warning("%s: duplicate member %s ignored", url, info.name)
                continue
            current[ext] = data
    except ShardDamage as damage:
        if damage.reason == "truncated_tar_member":
            if current is not None and current["__key__"] != damage.key:
                yield current  # complete: the damaged member starts the next sample
            skipped.add(damage.reason, f"{url}:{damage.key}", damage.detail)
            return  # that sample is dropped
        # The pending sample goes on to decoding, which counts it if it is incomplete.
        skipped.add(damage.reason, url, damage.detail)
    if current is not None:
        yield current


def _default_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardDataset(IterableDataset):
    """Decoded samples (``__key__``, ``image`` RGB PIL, ``web_caption``, ``synthetic_captions`` normalised to
    dicts, other JSON fields) from WebDataset shards.

    Splitting: shards are shuffled per epoch with (seed, epoch), identically on every rank, then split by rank
    (explicit ``rank``/``world_size``; None = torch.distributed, else the RANK/WORLD_SIZE environment, else 0/1)
    and by DataLoader worker, so no shard is read twice in an epoch across the job. ``resample=True`` instead
    draws shards at random with replacement, endlessly, independently per rank and worker (for more readers
    than shards, or epoch-free training). ``shuffle_buffer`` > 1 shuffles samples within a buffer of that size.
    Call ``set_epoch(epoch)`` before each pass. ``max_pixels``: decompression-bomb limit (None = none).
    ``require_synthetic``: skip (as ``missing_synthetic_caption``) samples without a synthetic caption.
    ``image_type``: "pil" (a PIL image, ``decode_image``) or "tensor" (a uint8 [3, H, W] tensor,
    ``decode_image_tensor``: libjpeg-turbo straight into a tensor; what training reads). ``decode_crops``
    (with "tensor"): the ``(output size, min area fraction)`` of the crops the images feed; large JPEGs are
    then decoded at a reduced scale that keeps every crop a downscale (``decode.jpeg_scale_for``)."""

    def __init__(
        self,
        urls: str | Iterable[str],
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        resample: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        shuffle_shards: bool = True,
        require_synthetic: bool = False,
        image_type: str = "pil",
        decode_crops: Sequence[tuple[int, float]] | None = None,
    ) -> None:
        super().__init__()
        self.urls = expand_urls(urls)
        default_rank, default_world = _default_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if self.world_size > len(self.urls) and not resample:
            log.warning(
                "%d shards for %d ranks: some ranks get none (use resample=True or more shards)",
                len(self.urls),
                self.world_size,
            )
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.resample = resample
        self.max_pixels = max_pixels
        self.shuffle_shards = shuffle_shards
        self.require_synthetic = require_synthetic
        if image_type not in ("pil", "tensor"):
            raise ValueError(f"image_type must be 'pil' or 'tensor', got {image_type!r}")
        self.image_type = image_type
        self.decode_crops = list(decode_crops) if decode_crops else None
        self.epoch = 0
        self.skipped = SkipCounter()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards_for(self, worker: int = 0, num_workers: int = 1) -> list[str]:
        """This rank's shards for one worker in the current epoch (not used with ``resample``)."""
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(f"shards:{self.seed}:{self.epoch}").shuffle(urls)  # the same order on every rank
        return split_shards(urls, self.rank, self.world_size, worker, num_workers)

    def _shard_stream(self, worker: int, num_workers: int, rng: random.Random) -> Iterator[str]:
        if self.resample:
            while True:
                yield rng.choice(self.urls)
        mine = self.shards_for(worker, num_workers)
        if not mine:
            log.warning(
                "rank %d worker %d of %d: no shards to read (%d shards in all)",
                self.rank,
                worker,
                num_workers,
                len(self.urls),
            )
        yield from mine

    def decode(self, raw: dict) -> dict:
        """A raw tar sample -> a decoded sample, or SkipSample."""
        key = raw.get("__key__", "?")
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in raw), None)
        if image_ext is None:
            raise SkipSample("missing_image", key)
        if "json" not in raw and "txt" not in raw:
            raise SkipSample("missing_json", key)
        meta = parse_metadata(raw.get("json", b"{}"), fallback_caption=raw.get("txt"))
        if self.require_synthetic and not meta["synthetic_captions"]:
            raise SkipSample("missing_synthetic_caption", key)
        if self.image_type == "tensor":
            meta["image"] = decode_image_tensor(raw[image_ext], self.max_pixels, crops=self.decode_crops)
        else:
            meta["image"] = decode_image(raw[image_ext], self.max_pixels)
        meta["__key__"] = key
        meta["__url__"] = raw.get("__url__", "")
        return meta

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = random.Random(f"samples:{self.seed}:{self.epoch}:{self.rank}:{worker}")
        reader_id = f"shards:{self.rank}:{worker}"

        def stamped(sample: dict) -> dict:
            sample["__skip_counts__"] = {reader_id: dict(self.skipped)}
            return sample

        buffer: list[dict] = []
        for url in self._shard_stream(worker, num_workers, rng):
            for raw in iter_tar_samples(url, self.skipped):
                try:
                    sample = self.decode(raw)
                except SkipSample as skip:
                    self.skipped.add(skip.reason, raw.get("__key__", "?"), str(skip))
                    continue
                if self.shuffle_buffer <= 1:
                    yield stamped(sample)
                elif len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                else:
                    slot = rng.randrange(len(buffer))
                    sample, buffer[slot] = buffer[slot], sample
                    yield stamped(sample)
        rng.shuffle(buffer)
        for sample in buffer:
            yield stamped(sample)


__all__ = [
    "ShardDamage",
    "ShardDataset",
    "expand_urls",
    "iter_tar_members",
    "iter_tar_samples",
    "safe_key",
    "split_member_name",
    "split_shards",
    "write_shards",
]
