"""Map-style datasets over image folders: a ``captions.jsonl`` layout and the COCO captions layout."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from torch.utils.data import Dataset

from open_tips.data.decode import DEFAULT_MAX_PIXELS, SkipCounter, SkipSample, decode_image, parse_metadata


class FolderDataset(Dataset):
    """``root/captions.jsonl``: one JSON object per line, ``{"image": "rel/path.jpg", "web_caption": ...,
    "synthetic_captions": [...]}``. Malformed lines are counted at construction; unreadable images are
    replaced by the next readable sample (and counted) so that indexing never raises."""

    def __init__(self, root: str | Path, captions_file: str = "captions.jsonl",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.root = Path(root)
        self.max_pixels = max_pixels
        self.skipped = SkipCounter()
        path = self.root / captions_file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no captions file (expected JSON lines with image + web_caption)")
        self.records: list[dict] = []
        for line_number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                meta = parse_metadata(line)
            except SkipSample as skip:
                self.skipped.add(skip.reason, f"{path}:{line_number}", str(skip))
                continue
            if not isinstance(meta.get("image"), str):
                self.skipped.add("missing_image", f"{path}:{line_number}")
                continue
            meta.setdefault("__key__", Path(meta["image"]).stem)
            self.records.append(meta)
        if not self.records:
            raise ValueError(f"{path}: no usable samples ({dict(self.skipped)})")

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> dict:
        """The sample or SkipSample."""
        record = self.records[index]
        image_path = self.root / record["image"]
        try:
            data = image_path.read_bytes()
        except OSError as err:
            raise SkipSample("missing_image", str(image_path)) from err
        return {**record, "image": decode_image(data, self.max_pixels)}

    def __getitem__(self, index: int) -> dict:
        for offset in range(len(self.records)):
            current = (index + offset) % len(self.records)
            try:
                return self.load(current)
            except SkipSample as skip:
                self.skipped.add(skip.reason, self.records[current].get("image", "?"), str(skip))
        raise RuntimeError(f"{self.root}: no readable image at all")


def coco_caption_records(annotation_file: str | Path, image_dir: str | Path) -> list[dict]:
    """COCO ``captions_*.json`` -> records with the first caption as ``web_caption`` and the others as
    synthetic captions (template ``coco``)."""
    data = json.loads(Path(annotation_file).read_text())
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in data.get("annotations", []):
        captions[ann["image_id"]].append(ann["caption"].strip())
    records = []
    for image in data.get("images", []):
        texts = captions.get(image["id"], [])
        if not texts:
            continue
        records.append({
            "__key__": Path(image["file_name"]).stem,
            "image": str(Path(image_dir) / image["file_name"]),
            "web_caption": texts[0],
            "synthetic_captions": [{"text": t, "template": "coco", "model": "human"} for t in texts[1:]],
        })
    return records


class CocoCaptionsDataset(FolderDataset):
    def __init__(self, annotation_file: str | Path, image_dir: str | Path,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.root = Path("/")
        self.max_pixels = max_pixels
        self.skipped = SkipCounter()
        self.records = coco_caption_records(annotation_file, image_dir)
        if not self.records:
            raise ValueError(f"{annotation_file}: no image with captions")
