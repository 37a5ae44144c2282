"""The captioning pipeline: units of work (shards or image chunks), split across processes, resumable.

For each unit the output (a new shard with every original member copied unchanged and the ``.json`` extended
by new ``synthetic_captions`` entries, or a sidecar JSONL) is written under a temporary name and renamed when
complete, then a ``_done/<unit>.json`` marker records its counts. A restart skips units with a marker, so a
killed job loses at most the units in flight. Unit ``i`` belongs to rank ``i % world_size``.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from open_tips.captions.prompts import CaptionTemplate
from open_tips.data.captions import normalise_synthetic
from open_tips.data.decode import IMAGE_EXTENSIONS, SkipSample, decode_image
from open_tips.data.shards import expand_urls

log = logging.getLogger(__name__)


@dataclass
class DecodeSettings:
    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_caption_tokens: int = 64


@dataclass
class Unit:
    name: str  # output name, e.g. "shard-000003"
    source: str  # a tar path / URL, or a folder
    images: list[str] = field(default_factory=list)  # for folder units: image paths relative to source


@dataclass
class Sample:
    key: str
    members: dict[str, bytes]  # original tar members (extension -> bytes), copied unchanged
    meta: dict
    image: Image.Image | None = None
    error: str | None = None


def discover_units(inputs: list[str], chunk_size: int = 256) -> list[Unit]:
    """Tar shards (paths, brace patterns, globs, ``pipe:``) or image folders (chunks of ``chunk_size``)."""
    units: list[Unit] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(str(p.relative_to(path)) for p in path.rglob("*")
                            if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
            for start in range(0, len(images), chunk_size):
                units.append(Unit(f"{path.name}-{start // chunk_size:06d}", str(path), images[start:start + chunk_size]))
        else:
            urls = sorted(glob.glob(item)) if any(c in item for c in "*?[") else expand_urls(item)
            for url in urls:
                stem = re.sub(r"\.tar$", "", Path(url.split()[-1]).name)
                units.append(Unit(stem, url))
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError("two input units have the same name; rename the shards or folders")
    if not units:
        raise ValueError(f"no input shards or images found in {inputs}")
    return units


def _read_tar(url: str) -> Iterator[Sample]:
    """Groups members by key; damaged archives end early with an error sample."""
    if url.startswith("pipe:"):
        import subprocess

        stream = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE).stdout
        archive = tarfile.open(fileobj=stream, mode="r|*")
    else:
        archive = tarfile.open(url, mode="r|*")
    current_key, members = None, {}
    try:
        for info in archive:
            if not info.isfile():
                continue
            name = info.name
            key, _, ext = Path(name).name.partition(".")
            key = str(Path(name).parent / key) if Path(name).parent != Path(".") else key
            data = archive.extractfile(info).read()
            if current_key is not None and key != current_key:
                yield _make_sample(current_key, members)
                members = {}
            current_key = key
            members[ext] = data
    except (tarfile.TarError, OSError, EOFError) as err:
        if current_key is not None:
            yield Sample(current_key, members, {}, error=f"truncated_tar: {err}")
            current_key = None
    finally:
        archive.close()
    if current_key is not None:
        yield _make_sample(current_key, members)


def _make_sample(key: str, members: dict[str, bytes]) -> Sample:
    meta: dict = {}
    error = None
    if "json" in members:
        try:
            meta = json.loads(members["json"])
            if not isinstance(meta, dict):
                meta, error = {}, "malformed_json"
        except (json.JSONDecodeError, UnicodeDecodeError):
            error = "malformed_json"
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    image = None
    if image_ext is None:
        error = error or "missing_image"
    else:
        try:
            image = decode_image(members[image_ext])
        except SkipSample as skip:
            error = error or skip.reason
    return Sample(key, members, meta, image, error)


def _read_folder(unit: Unit) -> Iterator[Sample]:
    root = Path(unit.source)
    captions = {}
    jsonl = root / "captions.jsonl"
    if jsonl.is_file():
        for line in jsonl.read_text().splitlines():
            try:
                record = json.loads(line)
                captions[record["image"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    for relative in unit.images:
        data = (root / relative).read_bytes()
        meta = {k: v for k, v in captions.get(relative, {}).items() if k != "image"}
        ext = Path(relative).suffix.lower().lstrip(".")
        sample = _make_sample(str(Path(relative).with_suffix("")), {ext: data})
        sample.meta = meta
        sample.meta["image"] = relative
        yield sample


class Captioner:
    """Loads an HF image-to-text model from a local directory and captions batches of images."""

    def __init__(self, model_path: str, device: str | None = None, dtype: str = "auto") -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            torch_dtype = (torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported()
                           else torch.float32)
        else:
            torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        self.processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, local_files_only=True,
                                                                 dtype=torch_dtype).to(self.device).eval()
        self.dtype = torch_dtype
        self.name = Path(model_path).name or str(model_path)
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None and tokenizer.padding_side != "left":
            tokenizer.padding_side = "left"  # decoder-only generation needs left padding

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @torch.no_grad()
    def generate(self, images: list[Image.Image], prompts: list[str], settings: DecodeSettings) -> list[str]:
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        inputs.pop("labels", None)
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items()}
        kwargs = dict(max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams,
                      do_sample=settings.do_sample)
        if settings.do_sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        output = self.model.generate(**inputs, **kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [clean_caption(t, p, self.tokenizer, settings.max_caption_tokens) for t, p in zip(texts, prompts)]


def clean_caption(text: str, prompt: str, tokenizer=None, max_tokens: int | None = None) -> str:
    """Removes an echoed prompt, normalises whitespace, caps the length in the captioner's tokens."""
    text = " ".join(text.split())
    prompt_clean = " ".join(prompt.split())
    if prompt_clean and text.lower().startswith(prompt_clean.lower()):
        text = text[len(prompt_clean):].lstrip(" :,-")
    if tokenizer is not None and max_tokens:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            text = tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip()
    return text.strip()


@dataclass
class UnitResult:
    captioned: int = 0
    skipped: int = 0
    failed: Counter = field(default_factory=Counter)


def _write_tar(path: Path, samples: list[Sample]) -> None:
    with tarfile.open(path, "w") as archive:
        for sample in samples:
            for ext, data in sample.members.items():
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                archive.addfile(info, io.BytesIO(data))


def caption_unit(unit: Unit, captioner: Captioner, templates: list[CaptionTemplate], settings: DecodeSettings,
                 batch_size: int, output_dir: Path, sidecar: bool, progress: tqdm | None = None) -> UnitResult:
    result = UnitResult()
    samples = list(_read_folder(unit) if unit.images else _read_tar(unit.source))
    failures: dict[str, str] = {}
    usable = []
    for sample in samples:
        if sample.error:
            failures[sample.key] = sample.error
        else:
            sample.meta["synthetic_captions"] = normalise_synthetic(sample.meta.get("synthetic_captions"))
            usable.append(sample)
    for template in templates:
        todo = []
        for sample in usable:
            web = sample.meta.get("web_caption")
            existing = sample.meta["synthetic_captions"]
            if template.needs_web and not (isinstance(web, str) and web.strip()):
                failures.setdefault(sample.key, f"missing_web_caption_for_{template.name}")
                continue
            if template.needs_synthetic and not existing:
                failures.setdefault(sample.key, f"missing_synthetic_caption_for_{template.name}")
                continue
            todo.append((sample, template.render(web, existing[0]["text"] if existing else None)))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            captions = captioner.generate([s.image for s, _ in chunk], [p for _, p in chunk], settings)
            for (sample, _), caption in zip(chunk, captions):
                if not caption:
                    failures.setdefault(sample.key, f"empty_output_{template.name}")
                    continue
                sample.meta["synthetic_captions"].append(
                    {"text": caption, "template": template.name, "model": captioner.name})
            if progress is not None:
                progress.update(len(chunk) / len(templates))
    result.failed = Counter(reason.split(":")[0] for reason in failures.values())
    added = {s.key for s in usable if s.key not in failures}
    result.captioned = len(added)
    result.skipped = len(samples) - len(usable)

    name = unit.name
    if sidecar:
        tmp = output_dir / f".{name}.jsonl.tmp"
        with tmp.open("w") as handle:
            for sample in samples:
                record = {"key": sample.key, "synthetic_captions": sample.meta.get("synthetic_captions", [])}
                if sample.key in failures:
                    record["error"] = failures[sample.key]
                handle.write(json.dumps(record) + "\n")
        os.replace(tmp, output_dir / f"{name}.jsonl")
    else:
        for sample in samples:
            if sample.error is None:
                sample.members["json"] = json.dumps(sample.meta).encode()
        tmp = output_dir / f".{name}.tar.tmp"
        _write_tar(tmp, samples)
        os.replace(tmp, output_dir / f"{name}.tar")
    marker = {"unit": name, "source": unit.source, "captioned": result.captioned, "skipped": result.skipped,
              "failed": dict(result.failed), "failures": failures, "time": time.time()}
    done_dir = output_dir / "_done"
    done_dir.mkdir(exist_ok=True)
    tmp_marker = done_dir / f".{name}.json.tmp"
    tmp_marker.write_text(json.dumps(marker, indent=2))
    os.replace(tmp_marker, done_dir / f"{name}.json")
    return result


def run_pipeline(model_path: str, inputs: list[str], output_dir: str | Path, templates: list[CaptionTemplate],
                 settings: DecodeSettings, batch_size: int = 16, rank: int = 0, world_size: int = 1,
                 device: str | None = None, dtype: str = "auto", sidecar: bool = False, chunk_size: int = 256,
                 captioner: Captioner | None = None) -> dict:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    units = discover_units(inputs, chunk_size)
    mine = [u for i, u in enumerate(units) if i % world_size == rank]
    done = {p.stem for p in (output_dir / "_done").glob("*.json")} if (output_dir / "_done").is_dir() else set()
    todo = [u for u in mine if u.name not in done]
    log.info("rank %d/%d: %d units, %d already done", rank, world_size, len(mine), len(mine) - len(todo))
    summary = {"units_total": len(mine), "units_skipped_done": len(mine) - len(todo), "captioned": 0,
               "skipped": 0, "failed": Counter()}
    if todo:
        captioner = captioner or Captioner(model_path, device, dtype)
        start = time.perf_counter()
        with tqdm(desc=f"caption[{rank}]", unit="img", dynamic_ncols=True) as progress:
            for unit in todo:
                result = caption_unit(unit, captioner, templates, settings, batch_size, output_dir, sidecar, progress)
                summary["captioned"] += result.captioned
                summary["skipped"] += result.skipped
                summary["failed"].update(result.failed)
                elapsed = time.perf_counter() - start
                progress.set_postfix(img_s=f"{summary['captioned'] / max(elapsed, 1e-9):.2f}")
        summary["images_per_s"] = summary["captioned"] / max(time.perf_counter() - start, 1e-9)
    summary["failed"] = dict(summary["failed"])
    (output_dir / f"summary-rank{rank}.json").write_text(json.dumps(summary, indent=2))
    return summary
