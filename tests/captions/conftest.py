"""Shared fixtures: the tiny random PaliGemma (built once per session) and shards made from COCO-mini images."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from open_tips.captions.tiny import make_tiny_paligemma
from tests import COCO_MINI

COCO = COCO_MINI


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_paligemma(tmp_path_factory.mktemp("tiny-paligemma"))


@pytest.fixture(scope="session")
def coco_jpegs() -> list[tuple[str, bytes]]:
    """(key, small JPEG bytes) of real COCO images, downsized so that the tests spend their time captioning."""
    paths = sorted((COCO / "val2017").glob("*.jpg"))[:24]
    if len(paths) < 24:
        pytest.skip(f"COCO-mini images not found under {COCO}")
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        image.thumbnail((96, 96))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        out.append((path.stem, buffer.getvalue()))
    return out


def write_tar(path: Path, samples: list[list[tuple[str, bytes]]]) -> Path:
    """A shard from samples given as lists of (member name, bytes), written with tarfile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for members in samples:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), 1_700_000_000
                archive.addfile(info, io.BytesIO(data))
    return path


def sample_members(
    key: str,
    jpeg: bytes,
    web: str | None = "a photo",
    synthetic: list | None = None,
    extra: dict | None = None,
) -> list[tuple[str, bytes]]:
    meta: dict = {} if web is None else {"web_caption": web}
    if synthetic is not None:
        meta["synthetic_captions"] = synthetic
    meta.update(extra or {})
    return [(f"{key}.jpg", jpeg), (f"{key}.json", json.dumps(meta).encode())]


def make_shards(
    folder: Path, jpegs: list[tuple[str, bytes]], per_shard: int, prefix: str = "in"
) -> list[Path]:
    paths = []
    for index, start in enumerate(range(0, len(jpegs), per_shard)):
        samples = [
            sample_members(key, data, web=f"web caption of {key}")
            for key, data in jpegs[start : start + per_shard]
        ]
        paths.append(write_tar(folder / f"{prefix}-{index:06d}.tar", samples))
    return paths


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as archive:
        return [(m.name, archive.extractfile(m).read()) for m in archive if m.isfile()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
