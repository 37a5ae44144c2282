"""write_shards publishes each shard like every other open_tips writer (open_tips.utils.atomic): the complete
temporary shard is fsynced before its rename and the directory after it, so a crash cannot leave an empty or
partial file under a shard name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from open_tips.data.shards import ShardDataset, write_shards


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced descriptors")
def test_each_shard_fsynced_before_rename_and_directory_after(tmp_path: Path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", f"{src} -> {dst}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    rng = np.random.default_rng(0)
    samples = [
        {
            "image": (rng.random((16, 16, 3)) * 255).astype(np.uint8),
            "web_caption": f"c{i}",
            "synthetic_captions": [],
        }
        for i in range(5)
    ]
    paths = write_shards(samples, str(tmp_path / "s-%06d.tar"), max_per_shard=2)
    assert [Path(p).name for p in paths] == ["s-000000.tar", "s-000001.tar", "s-000002.tar"]
    for path in paths:
        tmp = f"{path}.tmp"
        at = events.index(("replace", f"{tmp} -> {path}"))
        assert ("fsync", tmp) in events[:at]  # the data is on disk before the name points at it
        assert events[at + 1] == ("fsync", str(tmp_path))  # and the rename itself is durable
    assert sum(1 for _ in ShardDataset(str(tmp_path / "s-{000000..000002}.tar"))) == 5
