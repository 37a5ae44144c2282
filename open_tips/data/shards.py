"""WebDataset tar shards: writing from samples, and robust, rank/worker-split reading.

A sample is ``<key>.jpg`` (or another image extension) + ``<key>.json`` holding ``web_caption`` and
``synthetic_captions``. URLs may be local paths, brace patterns (``train-{000000..000099}.tar``) or
``pipe:`` commands. Bad samples are skipped and counted per reason in ``ShardDataset.skipped``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import braceexpand
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from open_tips.data.decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    SkipCounter,
    SkipSample,
    decode_image,
    parse_metadata,
)

log = logging.getLogger(__name__)


def expand_urls(urls: str | Iterable[str]) -> list[str]:
    """Brace-expands a pattern, a ``::``-separated list, or an iterable of patterns; keeps order."""
    if isinstance(urls, (str, os.PathLike)):
        urls = str(urls).split("::")
    out: list[str] = []
    for pattern in urls:
        out.extend(braceexpand.braceexpand(str(pattern)))
    if not out:
        raise ValueError("no shard URLs given")
    return out


def write_shards(samples: Iterable[dict], output_pattern: str, max_per_shard: int = 1000,
                 image_format: str = "jpg", quality: int = 95) -> list[str]:
    """Writes samples (dicts with ``image`` as PIL or encoded bytes, ``web_caption``, ``synthetic_captions``,
    optional ``__key__`` and extra JSON-able fields) to ``output_pattern`` (e.g. ``dir/shard-%06d.tar``).
    Each shard is written under a temporary name and renamed when complete."""
    Path(output_pattern).parent.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    shard_index, in_shard, writer, tmp_path = 0, 0, None, None

    def close() -> None:
        nonlocal writer
        if writer is not None:
            writer.close()
            final = output_pattern % (shard_index - 1)
            os.replace(tmp_path, final)
            written.append(final)
            writer = None

    for count, sample in enumerate(samples):
        if writer is None or in_shard >= max_per_shard:
            close()
            tmp_path = str(Path(output_pattern % shard_index).with_suffix(".tar.tmp"))
            writer = wds.TarWriter(tmp_path)
            shard_index += 1
            in_shard = 0
        image = sample["image"]
        if isinstance(image, (bytes, bytearray)):
            data, ext = bytes(image), sample.get("image_ext", image_format)
        else:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG" if image_format == "jpg" else image_format.upper(),
                                      quality=quality)
            data, ext = buffer.getvalue(), image_format
        meta = {k: v for k, v in sample.items()
                if k not in ("image", "image_ext", "__key__") and _jsonable(v)}
        writer.write({"__key__": sample.get("__key__", f"{count:09d}"), ext: data,
                      "json": json.dumps(meta).encode()})
        in_shard += 1
    close()
    return written


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def split_shards(urls: list[str], rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
    """Shards for (rank, worker): round-robin over rank first, then over the rank's workers, so no shard is
    read twice and every shard is read once per epoch across the job."""
    mine = urls[rank::world_size]
    return mine[worker::num_workers]


class ShardDataset(IterableDataset):
    """Iterates decoded samples from WebDataset shards, split across ranks and DataLoader workers."""

    def __init__(self, urls: str | Iterable[str], rank: int = 0, world_size: int = 1, shuffle_buffer: int = 0,
                 seed: int = 0, resample: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                 shuffle_shards: bool = True) -> None:
        super().__init__()
        self.urls = expand_urls(urls)
        if world_size > len(self.urls) and not resample:
            log.warning("%d shards for %d ranks: some ranks get none (use resample=True or more shards)",
                        len(self.urls), world_size)
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.resample = resample
        self.max_pixels = max_pixels
        self.shuffle_shards = shuffle_shards
        self.epoch = 0
        self.skipped = SkipCounter()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _worker_id(self) -> str:
        info = get_worker_info()
        return f"{self.rank}:{info.id if info is not None else 0}"

    def _my_shards(self) -> tuple[list[str], random.Random]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker)) & 0xFFFFFFFF)
        urls = list(self.urls)
        if self.shuffle_shards:
            random.Random(self.seed * 1000 + self.epoch).shuffle(urls)  # same order on every rank
        if self.resample:  # infinite stream of random shards, independent per rank and worker
            return [rng.choice(urls) for _ in range(10**6)], rng
        return split_shards(urls, self.rank, self.world_size, worker, num_workers), rng

    def _raw_samples(self, url: str) -> Iterator[dict]:
        """Groups tar members by key; a truncated or unreadable shard ends with a counted skip."""
        stream = wds.SimpleShardList([url])
        try:
            yield from wds.tariterators.tarfile_samples(stream, handler=self._tar_error)
        except Exception as err:  # noqa: BLE001 - a damaged archive must not stop training
            self.skipped.add("truncated_shard", url, str(err))

    def _tar_error(self, exn: Exception) -> bool:
        self.skipped.add("truncated_tar_member", "?", str(exn))
        return True  # continue

    def _decode(self, raw: dict) -> dict:
        key = raw.get("__key__", "?")
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in raw), None)
        if image_ext is None:
            raise SkipSample("missing_image", key)
        if "json" not in raw:
            raise SkipSample("missing_json", key)
        meta = parse_metadata(raw["json"])
        meta["image"] = decode_image(raw[image_ext], self.max_pixels)
        meta["__key__"] = key
        meta["__url__"] = raw.get("__url__", "")
        return meta

    def __iter__(self) -> Iterator[dict]:
        shards, rng = self._my_shards()
        buffer: list[dict] = []
        for url in shards:
            for raw in self._raw_samples(url):
                try:
                    sample = self._decode(raw)
                except SkipSample as skip:
                    self.skipped.add(skip.reason, raw.get("__key__", "?"), str(skip))
                    continue
                # Workers hold their own counters: each sample carries its worker's running totals, which
                # the batch builder forwards so the trainer can report job-wide skip counts.
                sample["__skip_counts__"] = (self._worker_id(), dict(self.skipped))
                if self.shuffle_buffer > 1:
                    buffer.append(sample)
                    if len(buffer) >= self.shuffle_buffer:
                        yield buffer.pop(rng.randrange(len(buffer)))
                else:
                    yield sample
        rng.shuffle(buffer)
        yield from buffer

