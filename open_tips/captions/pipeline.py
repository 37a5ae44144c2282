"""The captioning pipeline: units of work split across processes, captioned in batches, resumable.

For each unit (a shard, or a chunk of a folder's images) the output -- a new shard holding every original
member unchanged and the ``.json`` extended by new ``synthetic_captions`` entries, or with ``sidecar`` a JSONL
of the new captions keyed by sample key -- is streamed to a temporary file, fsynced, renamed into place, and
then recorded by a marker ``_done/<unit>.json`` (counts and per-sample failures). A restart with ``resume``
skips units with a marker, so a killed job loses at most the unit in flight. Unit ``i`` of the job's fixed
unit list belongs to rank ``i % world_size``.

Per-sample problems (undecodable image, missing web caption for ``rewrite``, empty generation, ...) are
recorded with a reason and never stop the job. A batch that fails to generate is retried one sample at a time;
when generation keeps failing for many samples in a row the fault is systemic (wrong model, out of memory), and
the job stops instead of marking the rest of the dataset as failed (the unit in flight is not marked done).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from open_tips.captions.model import Captioner, CaptionModel, DecodeSettings, model_display_name
from open_tips.captions.prompts import CaptionTemplate
from open_tips.captions.sources import (
    BadImage,
    JsonlWriter,
    RawSample,
    ShardWriter,
    Unit,
    UnreadableUnit,
    decode_image,
    discover_units,
    read_unit,
)
from open_tips.data.decode import load_json_object
from open_tips.utils.atomic import atomic_write, atomic_write_json, remove_stale_temporaries

log = logging.getLogger(__name__)

RUN_FILE = "_caption_run.json"
DONE_DIR = "_done"
MAX_LISTED_FAILURES = 200  # per-sample failures listed in a rank's summary (all are in the unit markers)
# Hook for tests and callers: (event, unit name, samples written so far in the unit); events "batch", "unit".
Hook = Callable[[str, str, int], None]
T = TypeVar("T")


@dataclass
class PipelineConfig:
    templates: list[CaptionTemplate]
    settings: DecodeSettings = field(default_factory=DecodeSettings)
    batch_size: int = 16
    sidecar: bool = False
    chunk_size: int = 512  # images per unit for folder inputs
    rank: int = 0
    world_size: int = 1
    resume: bool = False
    seed: int = 0
    progress: bool = True


@dataclass
class Sample:
    """A sample in flight: its raw members, parsed metadata, decoded image and outcome per template."""

    raw: RawSample
    meta: dict[str, Any] | None = None  # parsed .json (None: no .json member)
    web_caption: str | None = None
    image: Image.Image | None = None
    error: str | None = None  # the whole sample is unusable (copied through unchanged)
    detail: str = ""
    new: list[dict[str, str]] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    present: list[str] = field(default_factory=list)  # templates skipped: caption already there

    @property
    def key(self) -> str:
        return self.raw.key

    def existing(self) -> list[Any]:
        captions = (self.meta or {}).get("synthetic_captions")
        return captions if isinstance(captions, list) else []

    def latest_synthetic(self, exclude: str) -> str | None:
        """The most recent synthetic caption not made by template ``exclude`` (the new ones of this run
        first): what ``rewrite`` conditions on, so ``--template detailed rewrite`` rewrites the fresh one."""
        for entry in reversed(self.existing() + self.new):
            text, template = (
                (entry, None) if isinstance(entry, str) else (entry.get("text"), entry.get("template"))
            )
            if isinstance(text, str) and text.strip() and template != exclude:
                return text
        return None

    def fail(self, template: str, reason: str, detail: str = "") -> None:
        record = {"key": self.key, "template": template, "reason": reason}
        if detail:
            record["detail"] = detail[:300]
        self.failures.append(record)


def parse_sample(raw: RawSample, size_hint: int | None = None) -> Sample:
    """Raw members -> metadata + decoded image, or a sample with ``error`` (never raises)."""
    sample = Sample(raw, error=raw.error, detail=raw.detail)
    if sample.error:
        return sample
    if raw.meta_override is not None:  # folder input: captions.jsonl record (or nothing)
        sample.meta = dict(raw.meta_override)
    elif (data := raw.member("json")) is not None:
        try:
            sample.meta = load_json_object(data)  # training's rule and reason
        except BadImage as bad:
            sample.error, sample.detail = bad.reason, bad.detail
            return sample
    if sample.meta is not None and not isinstance(sample.meta.get("synthetic_captions", []), list):
        sample.error, sample.detail = "malformed_json", "synthetic_captions is not a list"
        return sample
    web = (sample.meta or {}).get("web_caption")
    if (not isinstance(web, str) or not web.strip()) and (txt := raw.member("txt")) is not None:
        web = txt.decode("utf-8", "replace")  # img2dataset-style shards keep the alt-text in <key>.txt
    sample.web_caption = web.strip() if isinstance(web, str) and web.strip() else None
    image = raw.image_member()
    if image is None:
        sample.error = "missing_image"
        return sample
    try:
        sample.image = decode_image(image[1], size_hint)
    except BadImage as bad:
        sample.error, sample.detail = bad.reason, bad.detail
    return sample


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Runs ``items`` (tar reading + image decoding) in a thread, ``depth`` ahead of the consumer, so that
    input work overlaps generation. Exceptions are re-raised in the consumer."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(err)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # closes the tar stream

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class SystemicFailure(RuntimeError):
    """Generation failed for many samples in a row: not bad input, a broken set-up."""


@dataclass
class ErrorStreak:
    """Consecutive samples whose generation raised, across batches and units."""

    limit: int
    count: int = 0

    def record(self, outcome: str | BaseException) -> None:
        if not isinstance(outcome, BaseException):
            self.count = 0
            return
        self.count += 1
        if self.count >= self.limit:
            raise SystemicFailure(
                f"generation failed for {self.count} samples in a row, last with "
                f"{type(outcome).__name__}: {outcome}"
            ) from outcome


def _generate(
    captioner: CaptionModel,
    pairs: list[tuple[Sample, str]],
    template: CaptionTemplate,
    settings: DecodeSettings,
    streak: ErrorStreak,
) -> None:
    """Captions one batch for one template; a failing batch is retried sample by sample."""
    try:
        captions = captioner.generate([s.image for s, _ in pairs], [p for _, p in pairs], settings)
        outcomes: list[str | BaseException] = list(captions)
    except Exception as err:  # noqa: BLE001 - isolate the sample that breaks the batch
        if len(pairs) == 1:
            outcomes = [err]
        else:
            log.warning(
                "batch generation failed (%s: %s); retrying one sample at a time", type(err).__name__, err
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            outcomes = []
            for sample, prompt in pairs:
                try:
                    outcomes.append(captioner.generate([sample.image], [prompt], settings)[0])
                except Exception as single:  # noqa: BLE001
                    outcomes.append(single)
    for (sample, _), outcome in zip(pairs, outcomes):
        streak.record(outcome)
        if isinstance(outcome, BaseException):
            sample.fail(template.name, "generation_error", f"{type(outcome).__name__}: {outcome}")
        elif not outcome.strip():
            sample.fail(template.name, "empty_output")
        else:
            sample.new.append({"text": outcome, "template": template.name, "model": captioner.name})


def caption_batch(
    samples: list[Sample], captioner: CaptionModel, config: PipelineConfig, streak: ErrorStreak | None = None
) -> None:
    """Adds each template's caption to the usable samples, in template order (so ``rewrite`` sees captions
    made earlier in the same call); records why a sample gets none."""
    for template in config.templates:
        pairs: list[tuple[Sample, str]] = []
        for sample in samples:
            if sample.error:
                continue
            if any(
                isinstance(e, dict)
                and e.get("template") == template.name
                and e.get("model") == captioner.name
                for e in sample.existing()
            ):
                sample.present.append(template.name)  # e.g. a re-run over already captioned shards
                continue
            web = sample.web_caption
            synthetic = (
                sample.latest_synthetic(exclude=template.name) if template.needs("synthetic") else None
            )
            if template.needs("web") and web is None:
                sample.fail(template.name, "missing_web_caption")
            elif template.needs("synthetic") and synthetic is None:
                sample.fail(template.name, "missing_synthetic_caption")
            else:
                pairs.append((sample, template.render(captioner.prompt_style, web, synthetic)))
        if pairs:
            _generate(
                captioner, pairs, template, config.settings, streak or ErrorStreak(max(8, config.batch_size))
            )


@dataclass
class UnitReport:
    unit: str
    source: str
    output: str = ""
    samples: int = 0
    captioned: int = 0  # samples with at least one new caption
    failed_samples: int = 0  # samples with at least one failure
    captions_added: int = 0
    by_template: dict[str, Counter] = field(default_factory=dict)
    reasons: Counter = field(default_factory=Counter)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, sample: Sample) -> None:
        self.samples += 1
        if sample.error:
            record = {"key": sample.key, "template": "*", "reason": sample.error}
            if sample.detail:
                record["detail"] = sample.detail[:300]
            sample.failures = [record]
        self.captioned += bool(sample.new)
        self.failed_samples += bool(sample.failures)
        self.captions_added += len(sample.new)
        for entry in sample.new:
            self.by_template.setdefault(entry["template"], Counter())["added"] += 1
        for name in sample.present:
            self.by_template.setdefault(name, Counter())["already_present"] += 1
        for failure in sample.failures:
            self.reasons[failure["reason"]] += 1
            if failure["template"] != "*":
                self.by_template.setdefault(failure["template"], Counter())["failed"] += 1
        self.failures.extend(sample.failures)

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "source": self.source,
            "output": self.output,
            "samples": self.samples,
            "captioned": self.captioned,
            "failed_samples": self.failed_samples,
            "captions_added": self.captions_added,
            "by_template": {k: dict(v) for k, v in self.by_template.items()},
            "failed_reasons": dict(self.reasons),
            "failures": self.failures,
            "seconds": round(self.seconds, 3),
            "finished_at": time.time(),
        }


def _output_path(output_dir: Path, unit: Unit, sidecar: bool) -> Path:
    return output_dir / f"{unit.name}.{'jsonl' if sidecar else 'tar'}"


def _unit_seed(seed: int, name: str) -> int:
    # Sampling depends on (seed, unit) only: a resumed or differently split job writes the same captions.
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def process_unit(
    unit: Unit,
    captioner: CaptionModel,
    config: PipelineConfig,
    output_dir: Path,
    progress: tqdm | None = None,
    hook: Hook | None = None,
    size_hint: int | None = None,
    streak: ErrorStreak | None = None,
) -> UnitReport:
    """Captions one unit and publishes its output; the caller writes the done marker."""
    streak = streak or ErrorStreak(max(8, config.batch_size))
    start = time.perf_counter()
    final = _output_path(output_dir, unit, config.sidecar)
    report = UnitReport(unit.name, unit.source, final.name)
    torch.manual_seed(_unit_seed(config.seed, unit.name))

    def fill(tmp: str) -> None:
        writer: ShardWriter | JsonlWriter = (
            JsonlWriter(Path(tmp)) if config.sidecar else ShardWriter(Path(tmp))
        )
        samples = _prefetch((parse_sample(raw, size_hint) for raw in read_unit(unit)), 2 * config.batch_size)
        try:
            for batch in _batched(samples, config.batch_size):
                caption_batch(batch, captioner, config, streak)
                for sample in batch:
                    report.add(sample)
                    _write(writer, sample, unit)
                    sample.image = None
                if progress is not None:
                    progress.update(len(batch))
                if hook is not None:
                    hook("batch", unit.name, report.samples)
            writer.close()
        finally:
            if not writer.handle.closed:
                writer.handle.close()
            samples.close()  # stops the reading thread now, not whenever the traceback is collected

    # The unit's output appears complete or not at all; a failure removes the temporary file.
    atomic_write(final, fill)
    report.seconds = time.perf_counter() - start
    return report


def _write(writer: ShardWriter | JsonlWriter, sample: Sample, unit: Unit) -> None:
    if isinstance(writer, JsonlWriter):
        record: dict[str, Any] = {"key": sample.key, "synthetic_captions": sample.new}
        if sample.raw.source_path is not None:
            record["image"] = sample.raw.source_path
        if sample.failures:
            record["failed"] = [{k: v for k, v in f.items() if k != "key"} for f in sample.failures]
        writer.write(record)
        return
    new_json = None
    if sample.new:  # otherwise the original .json (or its absence) is kept byte for byte
        meta = dict(sample.meta or {})
        meta["synthetic_captions"] = list(sample.existing()) + sample.new  # originals first, untouched
        new_json = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    elif unit.is_folder and sample.raw.members and sample.meta:
        new_json = json.dumps(sample.meta, ensure_ascii=False).encode("utf-8")  # keep the web caption
    writer.write(sample.raw, new_json)


# --------------------------------------------------------------------------------------- run bookkeeping


def _run_record(model_name: str, config: PipelineConfig) -> dict[str, Any]:
    """What must not change between the runs (and ranks) writing one output directory."""
    return {
        "model": model_name,
        "templates": [
            {"name": t.name, "prefix": t.prefix, "instruction": t.instruction} for t in config.templates
        ],
        "decode": config.settings.as_dict(),
        "sidecar": config.sidecar,
        "seed": config.seed if config.settings.do_sample else None,
    }  # greedy/beam: the seed changes nothing


def _check_run_record(output_dir: Path, record: dict[str, Any]) -> None:
    path = output_dir / RUN_FILE
    if not path.exists():
        atomic_write_json(path, record)  # ranks racing here write the same content
    existing = json.loads(path.read_text())
    if existing != record:
        changed = sorted(k for k in set(existing) | set(record) if existing.get(k) != record.get(k))
        raise ValueError(
            f"{output_dir} holds captions made with other settings ({', '.join(changed)} differ, "
            f"see {path}); use another --output, or the same settings to resume"
        )


def _done_markers(output_dir: Path) -> dict[str, Path]:
    done = output_dir / DONE_DIR
    return {p.stem: p for p in done.glob("*.json")} if done.is_dir() else {}


def _clean_stale_temps(output_dir: Path, units: list[Unit]) -> None:
    """Removes temporary files a killed run left for this rank's units (never another rank's)."""
    names = {u.name for u in units}

    def owned(target: str) -> bool:
        return target.rsplit(".", 1)[0] in names  # drop .tar / .jsonl / .json

    for directory in (output_dir, output_dir / DONE_DIR):
        remove_stale_temporaries(directory, owned)


def _merge_reports(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {
        "units": 0,
        "samples": 0,
        "captioned": 0,
        "failed_samples": 0,
        "captions_added": 0,
        "by_template": {},
        "failed_reasons": Counter(),
    }
    for report in reports:
        total["units"] += 1
        for key in ("samples", "captioned", "failed_samples", "captions_added"):
            total[key] += report.get(key, 0)
        total["failed_reasons"].update(report.get("failed_reasons", {}))
        for name, counts in report.get("by_template", {}).items():
            total["by_template"].setdefault(name, Counter()).update(counts)
    total["failed_reasons"] = dict(total["failed_reasons"])
    total["by_template"] = {k: dict(v) for k, v in total["by_template"].items()}
    return total


def _write_job_summary(output_dir: Path, units: list[Unit], model_name: str) -> dict[str, Any] | None:
    """``summary.json`` over the whole job, once every unit of every rank has its marker."""
    markers = _done_markers(output_dir)
    if any(u.name not in markers for u in units):
        return None
    summary = _merge_reports(json.loads(markers[u.name].read_text()) for u in units)
    summary["model"] = model_name
    atomic_write_json(output_dir / "summary.json", summary)
    return summary


def run_pipeline(
    inputs: list[str],
    output_dir: str | Path,
    config: PipelineConfig,
    captioner: CaptionModel | Callable[[], CaptionModel],
    model_name: str,
    hook: Hook | None = None,
) -> dict[str, Any]:
    """Captions this rank's units of ``inputs`` into ``output_dir``; returns (and writes) the rank's summary.

    ``captioner`` may be a factory, called only when there is work left (a finished job does not load a
    multi-gigabyte model to find out). ``model_name`` is what the captions record; it must equal the
    captioner's ``name``."""
    if not 0 <= config.rank < config.world_size:
        raise ValueError(f"rank {config.rank} outside world size {config.world_size}")
    if config.batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / DONE_DIR).mkdir(exist_ok=True)
    units = discover_units(inputs, config.chunk_size)
    for unit in units:
        if (
            not unit.is_folder
            and os.path.exists(unit.source)
            and Path(unit.source).resolve() == _output_path(output_dir, unit, config.sidecar).resolve()
        ):
            raise ValueError(f"output {output_dir} would overwrite input shard {unit.source}")
    _check_run_record(output_dir, _run_record(model_name, config))
    mine = [u for i, u in enumerate(units) if i % config.world_size == config.rank]
    markers = _done_markers(output_dir)
    finished = [u for u in mine if u.name in markers]
    if finished and not config.resume:
        raise ValueError(
            f"{len(finished)} of this rank's units are already done in {output_dir} "
            f"(e.g. {finished[0].name}); pass --resume to continue, or use another --output"
        )
    _clean_stale_temps(output_dir, mine)
    todo = [u for u in mine if u.name not in markers]
    skipped_samples = sum(json.loads(markers[u.name].read_text()).get("samples", 0) for u in finished)
    log.info(
        "rank %d/%d: %d of %d units, %d already done",
        config.rank,
        config.world_size,
        len(mine),
        len(units),
        len(finished),
    )

    reports: list[dict[str, Any]] = []
    unreadable: list[dict[str, str]] = []
    start = time.perf_counter()
    seen = 0
    if todo:
        model = captioner() if callable(captioner) and not hasattr(captioner, "generate") else captioner
        if model.name != model_name:
            raise ValueError(f"captioner name {model.name!r} differs from model_name {model_name!r}")
        size_hint = getattr(model, "image_size_hint", None)
        streak = ErrorStreak(max(8, config.batch_size))
        start = time.perf_counter()  # images/s without the model loading time
        known: list[int] = []
        with (
            logging_redirect_tqdm(),
            tqdm(
                total=None,
                unit="img",
                dynamic_ncols=True,
                smoothing=0.1,
                desc=f"caption rank {config.rank}" if config.world_size > 1 else "caption",
                position=config.rank if config.world_size > 1 else None,
                disable=not config.progress,
            ) as progress,
        ):
            for index, unit in enumerate(todo):
                hint = unit.size_hint()
                if hint is not None:
                    known.append(hint)
                if known:  # ETA: known unit sizes, the others estimated at their mean
                    mean = sum(known) / len(known)
                    progress.total = progress.n + round(
                        (mean if hint is None else hint) + mean * (len(todo) - index - 1)
                    )
                progress.set_postfix(unit=f"{index + 1}/{len(todo)}", refresh=False)
                try:
                    report = process_unit(unit, model, config, output_dir, progress, hook, size_hint, streak)
                except UnreadableUnit as err:
                    log.warning("cannot read %s (%s); it stays undone for the next run", unit.source, err)
                    unreadable.append({"unit": unit.name, "source": unit.source, "reason": str(err)})
                    continue
                payload = report.as_dict()
                atomic_write_json(output_dir / DONE_DIR / f"{unit.name}.json", payload)
                reports.append(payload)
                seen += report.samples
                if hint is None:
                    known.append(report.samples)
                if hook is not None:
                    hook("unit", unit.name, report.samples)
                log.info(
                    "%s: %d samples, %d captioned, %d failed (%.1f s)",
                    unit.name,
                    report.samples,
                    report.captioned,
                    report.failed_samples,
                    report.seconds,
                )
    elapsed = time.perf_counter() - start
    merged = _merge_reports(reports)
    failures = [dict(f, unit=r["unit"]) for r in reports for f in r["failures"]]
    summary: dict[str, Any] = {
        "rank": config.rank,
        "world_size": config.world_size,
        "model": model_name,
        "templates": [t.name for t in config.templates],
        "units": {
            "assigned": len(mine),
            "processed": len(reports),
            "skipped_done": len(finished),
            "unreadable": len(unreadable),
            "total_in_job": len(units),
        },
        "samples": merged["samples"],
        "captioned": merged["captioned"],
        "failed": merged["failed_samples"],
        "skipped": skipped_samples,
        "captions_added": merged["captions_added"],
        "by_template": merged["by_template"],
        "failed_reasons": merged["failed_reasons"],
        "failures": failures[:MAX_LISTED_FAILURES],
        "failures_total": len(failures),
        "unreadable_units": unreadable,
        "seconds": round(elapsed, 2),
        "images_per_s": round(seen / elapsed, 3) if seen and elapsed > 0 else None,
    }
    summary["job_complete"] = _write_job_summary(output_dir, units, model_name) is not None
    atomic_write_json(output_dir / f"summary-rank{config.rank}.json", summary)
    return summary


def caption(
    model: str,
    inputs: list[str],
    output_dir: str | Path,
    config: PipelineConfig,
    device: str | None = None,
    dtype: str = "auto",
    prompt_style: str = "auto",
    model_name: str | None = None,
    hook: Hook | None = None,
) -> dict[str, Any]:
    """``open-tips caption`` as a function: loads the HF model from ``model`` (lazily) and runs the pipeline."""
    name = model_name or model_display_name(model)

    def load() -> Captioner:
        return Captioner(model, device=device, dtype=dtype, prompt_style=prompt_style, name=name)

    return run_pipeline(inputs, output_dir, config, load, name, hook)
