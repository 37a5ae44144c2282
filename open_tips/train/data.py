"""Training batches as a deterministic function of the step.

For map-style sources (the built-in dataset, folders) the batch of step ``s`` on rank ``r`` is built from
fixed sample indices (an epoch-seeded permutation) with augmentation randomness seeded by (seed, step, rank):
a resumed run sees exactly the batches an uninterrupted run would, whatever the number of loader workers.
Streaming WebDataset shards are split by rank and worker; each reader (rank, DataLoader worker) builds whole
batches, augmenting each sample with a seed that is a pure function of (seed, epoch, rank, worker, position in
the reader's stream), never with a global generator. A resume replays the stream and drops the batches
already consumed; since no random number is drawn from the restored state, the resumed run gets the very
batches (crops, masks, caption choices) of an uninterrupted run with the same ``data.num_workers``.

Skip counts from shards are reported per (epoch, reader) and summed, with a last counts-only item from each
reader at the end of its pass (so skips after its last full batch are counted too): the totals are cumulative
over epochs, and after whole epochs they do not depend on ``data.num_workers``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from open_tips.data.builtin import BuiltinShapes
from open_tips.data.captions import CaptionPolicy
from open_tips.data.collate import TIPSBatchBuilder
from open_tips.data.crops import MultiCropTransform
from open_tips.data.decode import SkipCounter, SkipSample, parse_metadata
from open_tips.data.folder import FolderDataset
from open_tips.data.masking import MaskGenerator
from open_tips.data.shards import ShardDataset, expand_urls, iter_tar_samples
from open_tips.formats.common import CheckpointError
from open_tips.formats.hub import looks_like_hub_id, resolve_hub_id
from open_tips.models.tokenizer import Tokenizer, find_tokenizer
from open_tips.train.config import TrainConfig
from open_tips.train.interrupt import ignore_stop_signals

BUILTIN_TEMPLATES = ("short", "detailed")

log = logging.getLogger(__name__)


def _builtin_dataset(cfg: TrainConfig):
    return BuiltinShapes(
        num_samples=cfg.data.num_samples,
        image_size=cfg.data.builtin_image_size,
        seed=cfg.train.seed,
        caption_noise=cfg.data.caption_noise,
    )


def _caption_texts(sample: dict) -> list[str]:
    texts = [sample["web_caption"]]
    for caption in sample.get("synthetic_captions", []):
        texts.append(caption["text"] if isinstance(caption, dict) else str(caption))
    return texts


def build_tokenizer(cfg: TrainConfig, run_dir: Path, ctx) -> Tokenizer:
    """The configured SentencePiece model, or (built-in data) one trained on the dataset's captions."""
    max_len = 64
    if cfg.data.tokenizer:
        try:
            return Tokenizer(cfg.data.tokenizer, max_len=max_len)
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"data.tokenizer: {err}") from err
    if cfg.model.init_from:
        base = Path(cfg.model.init_from)
        if not base.exists():
            raise FileNotFoundError(f"model.init_from / --init-from: {base}: no such file or directory")
        found = find_tokenizer(base if base.is_dir() else base.parent)
        if found is not None:
            return Tokenizer(found, max_len=max_len)
        raise ValueError(f"{cfg.model.init_from}: no tokenizer.model next to it; set data.tokenizer")
    if cfg.distill.teacher and cfg.distill.reads_teacher_text:
        # The teacher's text tower reads the student's ids: by default they are the teacher's own.
        found = _teacher_tokenizer(cfg.distill.teacher)
        if found is not None:
            return Tokenizer(found, max_len=max_len)
    if cfg.data.source != "builtin":
        raise ValueError("data.tokenizer is required for data other than the built-in dataset")
    path = run_dir / "tokenizer.model"
    if ctx.is_main and not path.exists():
        dataset = _builtin_dataset(cfg)
        texts = [t for i in range(min(len(dataset), 2000)) for t in _caption_texts(dataset[i])]
        Tokenizer.train(texts, run_dir / "tokenizer", vocab_size=cfg.data.tokenizer_vocab, max_len=max_len)
    ctx.barrier()
    return Tokenizer(path, max_len=max_len)


def _teacher_tokenizer(teacher: str) -> Path | None:
    """The ``tokenizer.model`` beside ``distill.teacher`` (a local path or a cached / downloadable hub id)."""
    path = Path(teacher)
    if not path.exists() and looks_like_hub_id(teacher):
        try:
            path = resolve_hub_id(teacher)
        except CheckpointError as err:
            raise ValueError(f"distill.teacher={teacher}: {err}") from err
    return find_tokenizer(path if path.is_dir() else path.parent)


def _batch_builder(cfg: TrainConfig, tokenizer: Tokenizer):
    data = cfg.data
    crops = MultiCropTransform(
        global_size=data.global_size,
        local_size=data.local_size,
        num_local=data.num_local,
        global_scale=data.global_scale,
        local_scale=data.local_scale,
    )
    masks = MaskGenerator(kind=data.mask_kind, ratio=data.mask_ratio, probability=data.mask_probability)
    policy = CaptionPolicy(data.caption_weights)
    return TIPSBatchBuilder(tokenizer, crops, masks, policy)


class StepBatches(Dataset):
    """Item ``s`` is the whole batch of step ``s`` for this rank (map-style source)."""

    def __init__(self, dataset, builder, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.dataset = dataset
        self.builder = builder
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._perm_epoch = -1
        self._perm = None

    def __len__(self) -> int:
        return 2**31 - 1

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.dataset), generator=gen)
            self._perm_epoch = epoch
        return self._perm

    def positions(self, step: int) -> range:
        """Positions in the endless epoch-concatenated sample stream that this rank takes at ``step``."""
        start = step * self.batch_size * self.world_size + self.rank * self.batch_size
        return range(start, start + self.batch_size)

    def indices(self, step: int) -> list[int]:
        size = len(self.dataset)
        return [int(self._permutation(p // size)[p % size]) for p in self.positions(step)]

    def __getitem__(self, step: int) -> dict:
        samples = [self.dataset[i] for i in self.indices(step)]
        # Augmentation seeded per stream position: identical whatever the world size or batch split.
        seeds = [self.seed * 1_000_000_007 + p for p in self.positions(step)]
        return self.builder(samples, seeds=seeds)


class _StepSampler(torch.utils.data.Sampler):
    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        step = self.start
        while True:
            yield step
            step += 1


def build_train_batches(cfg: TrainConfig, tokenizer: Tokenizer, start_step: int, ctx) -> Iterator[dict]:
    builder = _batch_builder(cfg, tokenizer)
    source = cfg.data.source
    if source == "builtin" or Path(source).is_dir() or source.endswith((".jsonl", ".json")):
        if source == "builtin":
            dataset = _builtin_dataset(cfg)
            templates = set(BUILTIN_TEMPLATES)
        else:
            dataset = FolderDataset(source, require_synthetic=cfg.data.require_synthetic)
            if ctx.is_main and dataset.splits:
                log.info("%s: COCO splits %s", source, ", ".join(dataset.splits))
            templates = {
                c.get("template", "default") if isinstance(c, dict) else "default"
                for r in dataset.records
                for c in r.get("synthetic_captions") or []
            }
        if ctx.is_main:
            warn_unknown_templates(cfg.data.caption_weights, templates, source)
        steps = StepBatches(dataset, builder, cfg.data.batch_size, cfg.train.seed, ctx.rank, ctx.world_size)
        # Accumulation consumes several loader items per optimiser step.
        loader = DataLoader(
            steps,
            batch_size=None,
            sampler=_StepSampler(start_step * cfg.train.accum_steps),
            num_workers=cfg.data.num_workers,
            persistent_workers=cfg.data.num_workers > 0,
            worker_init_fn=ignore_stop_signals,
            generator=_loader_generator(cfg.train.seed, 0),  # not the global one: resume stays exact
        )
        return iter(loader)
    return _shard_batches(cfg, builder, start_step, ctx)


def _loader_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch + 17)


def warn_unknown_templates(weights: dict[str, float] | None, templates: set[str], source: str) -> list[str]:
    """Warns about ``data.caption_weights`` templates with weight > 0 that the data does not have; returns them."""
    if not weights:
        return []
    unknown = sorted(t for t, w in weights.items() if w > 0 and t not in templates)
    if unknown:
        log.warning(
            "data.caption_weights: template(s) %s not in the data %s (its synthetic captions have: %s); "
            "their weight is never used",
            ", ".join(unknown),
            source,
            ", ".join(sorted(templates)) or "none",
        )
    return unknown


def shard_templates(urls: str, limit: int = 256) -> set[str]:
    """The synthetic-caption templates of the first ``limit`` samples of the first readable shard."""
    templates: set[str] = set()
    seen = 0
    for url in expand_urls(urls):
        for raw in iter_tar_samples(url, SkipCounter()):
            try:
                meta = parse_metadata(raw.get("json", b"{}"), fallback_caption=raw.get("txt") or "-")
            except SkipSample:
                continue
            templates.update(c["template"] for c in meta["synthetic_captions"])
            seen += 1
            if seen >= limit:
                return templates
        if seen:
            break
    return templates


def sample_seed(seed: int, epoch: int, rank: int, worker: int, position: int) -> int:
    """The augmentation seed of one streamed sample: a pure function of its place in the stream."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{rank}:{worker}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class ShardEpochBatches(IterableDataset):
    """One epoch of a ShardDataset as whole batches, built in the reader (DataLoader worker or main process)
    with per-sample seeds from ``sample_seed``; incomplete last batches are dropped. After its last batch each
    reader yields ``{"__reader_counts__": {reader_id: skip counts}}``, its final skip counts of the epoch."""

    def __init__(self, dataset, builder, batch_size: int, seed: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.builder = builder
        self.batch_size = batch_size
        self.seed = seed

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        epoch, rank = self.dataset.epoch, self.dataset.rank
        reader_id = f"shards:{rank}:{worker}:epoch{epoch}"
        self.dataset.skipped = SkipCounter()  # per epoch: the main-process copy would otherwise accumulate
        pending: list[dict] = []
        position = 0
        for sample in self.dataset:
            sample.pop("__skip_counts__", None)
            pending.append(sample)
            if len(pending) == self.batch_size:
                seeds = [
                    sample_seed(self.seed, epoch, rank, worker, position + i) for i in range(len(pending))
                ]
                position += len(pending)
                batch = self.builder(pending, seeds=seeds)
                batch["skip_counts"] = {reader_id: dict(self.dataset.skipped)}
                pending = []
                yield batch
        yield {"__reader_counts__": {reader_id: dict(self.dataset.skipped)}}


def decode_crops(data) -> list[tuple[int, float]] | None:
    """``(size, min area fraction)`` of the run's crops, for the reduced-size JPEG decoding of shards."""
    if not data.reduced_decode:
        return None
    crops = [(data.global_size, data.global_scale[0])]
    return crops + [(data.local_size, data.local_scale[0])] if data.num_local else crops


def _shard_batches(cfg: TrainConfig, builder, start_step: int, ctx) -> Iterator[dict]:
    dataset = ShardDataset(
        cfg.data.source,
        rank=ctx.rank,
        world_size=ctx.world_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        seed=cfg.train.seed,
        resample=cfg.data.resample,
        require_synthetic=cfg.data.require_synthetic,
        image_type="tensor",  # libjpeg-turbo into uint8 tensors; the crops stay uint8 until the end
        decode_crops=decode_crops(cfg.data),
    )
    if ctx.is_main and cfg.data.caption_weights:
        warn_unknown_templates(cfg.data.caption_weights, shard_templates(cfg.data.source), cfg.data.source)
    return _shard_stream(cfg, dataset, builder, start_step * cfg.train.accum_steps, ctx.rank)


def _shard_stream(cfg: TrainConfig, dataset, builder, skip: int, rank: int) -> Iterator[dict]:
    readers: dict[str, dict[str, int]] = {}  # latest counts per (epoch, reader)

    def totals() -> dict[str, dict[str, int]]:
        summed: dict[str, int] = {}
        for counts in readers.values():
            for reason, count in counts.items():
                summed[reason] = summed.get(reason, 0) + int(count)
        return {f"shards:{rank}": summed}

    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        loader = DataLoader(
            ShardEpochBatches(dataset, builder, cfg.data.batch_size, cfg.train.seed),
            batch_size=None,
            num_workers=cfg.data.num_workers,
            worker_init_fn=ignore_stop_signals,
            generator=_loader_generator(cfg.train.seed, epoch),
        )
        produced = 0
        for item in loader:
            if "__reader_counts__" in item:
                readers.update(item["__reader_counts__"])
                continue
            produced += 1
            readers.update(item.pop("skip_counts", {}))
            if skip > 0:  # consumed before the checkpoint: built from position seeds, so nothing to undo
                skip -= 1
                continue
            item["skip_counts"] = totals()
            yield item
        if produced == 0:
            raise RuntimeError(
                f"data source {cfg.data.source!r} produced no complete batch "
                f"(batch size {cfg.data.batch_size}); skipped samples: {totals()[f'shards:{rank}']}"
            )
        epoch += 1
