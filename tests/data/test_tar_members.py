"""The one tar reader and URL expansion that training and the captioner share (open_tips.data.shards)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from open_tips.data.shards import ShardDamage, expand_urls, iter_tar_members, split_member_name


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_members_in_order_without_webdataset_metadata(tmp_path: Path) -> None:
    shard = _tar(
        tmp_path / "a.tar",
        [
            ("__index__", b"i"),
            ("x/k1.JPG", b"1"),
            ("x/k1.json", b"{}"),
            ("k2.seg.png", b"2"),
            ("noext", b"3"),
        ],
    )
    got = [(key, ext, info.name, data) for key, ext, info, data in iter_tar_members(str(shard))]
    assert got == [
        ("x/k1", "jpg", "x/k1.JPG", b"1"),
        ("x/k1", "json", "x/k1.json", b"{}"),
        ("k2", "seg.png", "k2.seg.png", b"2"),  # the key ends at the file name's first dot
    ]
    assert split_member_name("a.b/c.d.e") == ("a.b/c", "d.e") and split_member_name("plain") is None


def test_damage_reasons(tmp_path: Path) -> None:
    with pytest.raises(ShardDamage) as missing:
        list(iter_tar_members(str(tmp_path / "nope.tar")))
    assert missing.value.reason == "unreadable_shard"
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 64)
    with pytest.raises(ShardDamage) as junk:
        list(iter_tar_members(str(tmp_path / "junk.tar")))
    assert junk.value.reason == "unreadable_shard"
    good = _tar(tmp_path / "good.tar", [("k1.jpg", b"a" * 600), ("k2.jpg", b"b" * 5000)])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[: 512 * 4 + 100])  # inside k2's data
    read = []
    with pytest.raises(ShardDamage) as truncated:
        for key, _, _, data in iter_tar_members(str(cut)):
            read.append((key, len(data)))
    assert read == [("k1", 600)]
    assert truncated.value.reason == "truncated_tar_member" and truncated.value.key == "k2"


def test_expand_urls_braces_lists_and_optional_globs(tmp_path: Path) -> None:
    for name in ("s-2.tar", "s-1.tar", "t-1.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_urls(f"{tmp_path}/s-{{1..2}}.tar::pipe:cat x-*.tar") == [
        f"{tmp_path}/s-1.tar",
        f"{tmp_path}/s-2.tar",
        "pipe:cat x-*.tar",
    ]
    assert expand_urls(f"{tmp_path}/s-*.tar") == [f"{tmp_path}/s-*.tar"]  # training passes patterns through
    assert expand_urls([f"{tmp_path}/s-*.tar", "pipe:cat y*.tar"], glob_local=True) == [
        f"{tmp_path}/s-1.tar",
        f"{tmp_path}/s-2.tar",
        "pipe:cat y*.tar",  # commands are not globbed
    ]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_urls(f"{tmp_path}/u-*.tar", glob_local=True)
