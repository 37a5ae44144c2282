"""Map-style datasets over image folders: the ``captions.jsonl`` layout and the COCO captions layout.

``FolderDataset(source)`` accepts
- a folder with ``captions.jsonl`` (one JSON object per line: ``{"image": "relative/path.jpg", "web_caption": ...,
  "synthetic_captions": [...]}``, paths relative to the folder), or the ``.jsonl`` file itself;
- a COCO captions file (``annotations/captions_<split>.json``) with ``image_dir`` (default: ``<split>`` beside
  the ``annotations`` folder, e.g. ``val2017``): the first caption of an image is its ``web_caption``, the others
  are synthetic captions with template ``coco`` (human-written, so ``model`` is ``human``);
- a COCO root folder (``annotations/captions_*.json`` + one image folder per split): the ``splits`` asked for;
  by default the training splits (names starting with ``train``, e.g. ``train2017``) when there are any, so
  that val2017, which ``open-tips eval`` tests on, never leaks into training (``coco_splits(root)`` lists them);
- a plain image folder (no ``captions.jsonl``, no ``annotations``): every image below it, its web caption from
  a ``<name>.txt`` beside it (as img2dataset writes); images without one are counted as ``missing_caption``
  and dropped, unless ``keep_uncaptioned`` (``make-shards``: written with an empty web caption).

Skip rules are the shards' (open_tips.data.decode): bad index entries (malformed JSON, no web caption, no
image path; no synthetic caption with ``require_synthetic``) are dropped at construction; an image that fails
to load at ``dataset[i]`` is replaced by the next loadable sample (a map-style dataset cannot shrink on the
fly), and both are counted per reason in
``skipped``. Samples carry ``__skip_counts__`` like shard samples: ``{"folder-index:<source>": counts at
construction, "folder:<pid>": load-time counts of this process}``, so the trainer can report them from workers.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import Dataset

from open_tips.data.captions import normalise_synthetic
from open_tips.data.decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    SkipCounter,
    SkipSample,
    decode_image,
    load_json_object,
    parse_metadata,
)

CAPTIONS_FILE = "captions.jsonl"


def coco_caption_records(
    annotation_file: str | Path, image_dir: str | Path | None = None, skipped: SkipCounter | None = None
) -> list[dict]:
    """COCO ``captions_*.json`` -> records ``{"__key__", "image": path, "web_caption", "synthetic_captions"}``
    (first caption = web caption, the others template ``coco``); images without a caption are counted as
    ``missing_caption`` in ``skipped``."""
    annotation_file = Path(annotation_file)
    if image_dir is None:
        split = annotation_file.stem.split("_", 1)[-1]  # captions_val2017 -> val2017
        image_dir = annotation_file.parent.parent / split
    try:
        data = json.loads(annotation_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{annotation_file}: not a readable COCO captions file ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{annotation_file}: no 'images' list; not a COCO captions file")
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in data.get("annotations", []):
        text = ann.get("caption") if isinstance(ann, dict) else None
        if isinstance(text, str) and text.strip():
            captions[ann.get("image_id")].append(" ".join(text.split()))
    records = []
    for image in data["images"]:
        texts = captions.get(image.get("id"), [])
        if not texts:
            if skipped is not None:
                skipped.add("missing_caption", str(image.get("file_name", image.get("id"))))
            continue
        records.append(
            {
                "__key__": Path(image["file_name"]).stem,
                "image": str(Path(image_dir) / image["file_name"]),
                "web_caption": texts[0],
                "synthetic_captions": [{"text": t, "template": "coco", "model": "human"} for t in texts[1:]],
            }
        )
    return records


def coco_splits(root: str | Path) -> list[str]:
    """The splits of a COCO root folder: ``annotations/captions_<split>.json`` -> ``<split>``, sorted."""
    return [p.stem.split("_", 1)[-1] for p in sorted((Path(root) / "annotations").glob("captions_*.json"))]


def default_coco_splits(root: str | Path) -> list[str]:
    """The training splits of a COCO root (``train*``), or all splits when none is named so."""
    splits = coco_splits(root)
    return [s for s in splits if s.startswith("train")] or splits


def image_files(root: str | Path) -> list[str]:
    """The image files below ``root`` (recursive, sorted), as POSIX paths relative to it; training and the
    captioner list plain folders with this."""
    root = Path(root)
    return [
        path.relative_to(root).as_posix()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
    ]


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, dict | SkipSample]]:
    """(line number, JSON object) for each non-blank line of a ``captions.jsonl``; a line that is not a JSON
    object comes as SkipSample("malformed_json") in its place. Training and the captioner read indexes so."""
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line_number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield line_number, load_json_object(line)
            except SkipSample as skip:
                yield line_number, skip


def image_folder_records(
    root: str | Path, skipped: SkipCounter, keep_uncaptioned: bool = False
) -> list[dict]:
    """Records of a plain image folder (recursive, sorted): web caption from ``<name>.txt`` beside each image."""
    root = Path(root)
    records = []
    for relative in image_files(root):
        path = root / relative
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else ""
        if not caption and not keep_uncaptioned:
            skipped.add("missing_caption", relative, "no caption file beside it")
            continue
        records.append(
            {
                "__key__": Path(relative).with_suffix("").as_posix(),
                "image": relative,
                "web_caption": " ".join(caption.split()),
                "synthetic_captions": [],
            }
        )
    return records


class FolderDataset(Dataset):
    """Image-caption samples from a folder (see the module docstring for the accepted layouts)."""

    def __init__(
        self,
        source: str | Path,
        captions_file: str = CAPTIONS_FILE,
        image_dir: str | Path | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        require_synthetic: bool = False,
        splits: list[str] | None = None,
        keep_uncaptioned: bool = False,
    ) -> None:
        source = Path(source)
        self.source = source
        self.splits: list[str] = []
        self.max_pixels = max_pixels
        self.index_skipped = SkipCounter()  # at construction, in the parent process: reported once
        self.skipped = SkipCounter()  # at load time, per process
        if source.is_file() and source.suffix == ".json":
            self.layout = "coco"
            self.root = Path()  # records hold full paths (absolute or relative to the working directory)
            self.records = coco_caption_records(source, image_dir, self.index_skipped)
        elif source.is_file() or (source / captions_file).is_file():
            self.layout = "jsonl"
            path = source if source.is_file() else source / captions_file
            self.root = path.parent
            self.records = self._read_jsonl(path)
        elif coco_splits(source):
            self.layout = "coco"
            self.root = Path()  # records hold full paths (absolute or relative to the working directory)
            self.splits = list(splits) if splits is not None else default_coco_splits(source)
            unknown = sorted(set(self.splits) - set(coco_splits(source)))
            if unknown:
                raise ValueError(
                    f"{source}: no annotations/captions_{unknown[0]}.json; splits: {', '.join(coco_splits(source))}"
                )
            self.records = []
            for split in self.splits:
                annotation_file = source / "annotations" / f"captions_{split}.json"
                self.records.extend(coco_caption_records(annotation_file, None, self.index_skipped))
        elif source.is_dir():
            self.layout = "images"
            self.root = source
            self.records = image_folder_records(source, self.index_skipped, keep_uncaptioned)
            if not self.records and not self.index_skipped:
                raise FileNotFoundError(
                    f"{source}: no images, no {captions_file} and no annotations/captions_*.json (COCO) found"
                )
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
        if require_synthetic:
            kept = []
            for record in self.records:
                if normalise_synthetic(record.get("synthetic_captions")):
                    kept.append(record)
                else:
                    self.index_skipped.add("missing_synthetic_caption", str(record.get("image")))
            self.records = kept
        if not self.records:
            raise ValueError(f"{source}: no usable samples (skipped: {dict(self.index_skipped)})")

    def _read_jsonl(self, path: Path) -> list[dict]:
        records = []
        for line_number, record in jsonl_lines(path):
            where = f"{path}:{line_number}"
            try:
                if isinstance(record, SkipSample):
                    raise record
                meta = parse_metadata(record)
            except SkipSample as skip:
                self.index_skipped.add(skip.reason, where, str(skip))
                continue
            if not isinstance(meta.get("image"), str) or not meta["image"].strip():
                self.index_skipped.add("missing_image", where, "no image path")
                continue
            meta.setdefault("__key__", Path(meta["image"]).with_suffix("").as_posix())
            records.append(meta)
        return records

    @property
    def all_skipped(self) -> dict[str, int]:
        """Construction-time and load-time skips of this process, per reason."""
        return dict(self.index_skipped + self.skipped)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        return self.root / self.records[index]["image"]

    def encoded(self, index: int) -> dict:
        """The record with ``image`` as the file's bytes (checked to decode) and ``image_ext``; or SkipSample.
        For re-packing into shards without re-encoding."""
        path = self.image_path(index)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SkipSample("missing_image", f"{path}: {err}") from err
        decode_image(data, self.max_pixels)
        ext = path.suffix.lower().lstrip(".") or "jpg"
        return {**self.records[index], "image": data, "image_ext": "jpg" if ext == "jpeg" else ext}

    def load(self, index: int) -> dict:
        """Sample ``index`` with the decoded RGB image, or SkipSample."""
        path = self.image_path(index)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise SkipSample("missing_image", f"{path}: {err}") from err
        return {**self.records[index], "image": decode_image(data, self.max_pixels)}

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self.records)
        if not 0 <= index < len(self.records):
            raise IndexError(index)
        for offset in range(len(self.records)):
            current = (index + offset) % len(self.records)
            try:
                sample = self.load(current)
            except SkipSample as skip:
                self.skipped.add(skip.reason, self.records[current]["image"], str(skip))
                continue
            sample["__skip_counts__"] = {
                f"folder-index:{self.source}": dict(self.index_skipped),
                f"folder:{os.getpid()}": dict(self.skipped),
            }
            return sample
        raise RuntimeError(f"{self.source}: no loadable image at all (skipped: {self.all_skipped})")


class CocoCaptionsDataset(FolderDataset):
    """A COCO captions file with its image folder (kept for existing callers; ``FolderDataset`` accepts both)."""

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(annotation_file, image_dir=image_dir, max_pixels=max_pixels)


__all__ = [
    "CocoCaptionsDataset",
    "FolderDataset",
    "coco_caption_records",
    "coco_splits",
    "default_coco_splits",
    "image_files",
    "image_folder_records",
    "jsonl_lines",
]
