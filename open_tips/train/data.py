"""Training batches as a deterministic function of the step.

For map-style sources (the built-in dataset, folders) the batch of step ``s`` on rank ``r`` is built from
fixed sample indices (an epoch-seeded permutation) with augmentation randomness seeded by (seed, step, rank):
a resumed run sees exactly the batches an uninterrupted run would, whatever the number of loader workers.
Streaming WebDataset shards are split by rank and worker; a resume skips the batches already consumed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from open_tips.data.tokenizer import Tokenizer
from open_tips.train.config import TrainConfig

log = logging.getLogger(__name__)


def _builtin_dataset(cfg: TrainConfig):
    from open_tips.data.builtin import BuiltinShapes

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
        return Tokenizer(cfg.data.tokenizer, max_len=max_len)
    if cfg.model.init_from:
        from open_tips.formats.load import _find_tokenizer

        base = Path(cfg.model.init_from)
        found = _find_tokenizer(base if base.is_dir() else base.parent)
        if found is not None:
            return Tokenizer(found, max_len=max_len)
        raise ValueError(f"{cfg.model.init_from}: no tokenizer.model next to it; set data.tokenizer")
    if cfg.data.source != "builtin":
        raise ValueError("data.tokenizer is required for data other than the built-in dataset")
    path = run_dir / "tokenizer.model"
    if ctx.is_main and not path.exists():
        dataset = _builtin_dataset(cfg)
        texts = [t for i in range(min(len(dataset), 2000)) for t in _caption_texts(dataset[i])]
        Tokenizer.train(texts, run_dir / "tokenizer", vocab_size=cfg.data.tokenizer_vocab, max_len=max_len)
    ctx.barrier()
    return Tokenizer(path, max_len=max_len)


def _batch_builder(cfg: TrainConfig, tokenizer: Tokenizer):
    from open_tips.data.captions import CaptionPolicy
    from open_tips.data.collate import TIPSBatchBuilder
    from open_tips.data.crops import MultiCropTransform
    from open_tips.data.masking import MaskGenerator

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
    if source == "builtin" or Path(source).is_dir():
        if source == "builtin":
            dataset = _builtin_dataset(cfg)
        else:
            from open_tips.data.folder import FolderDataset

            dataset = FolderDataset(source)
        steps = StepBatches(dataset, builder, cfg.data.batch_size, cfg.train.seed, ctx.rank, ctx.world_size)
        # Accumulation consumes several loader items per optimiser step.
        loader = DataLoader(
            steps,
            batch_size=None,
            sampler=_StepSampler(start_step * cfg.train.accum_steps),
            num_workers=cfg.data.num_workers,
            persistent_workers=cfg.data.num_workers > 0,
        )
        return iter(loader)
    return _shard_batches(cfg, builder, start_step, ctx)


def _shard_batches(cfg: TrainConfig, builder, start_step: int, ctx) -> Iterator[dict]:
    from open_tips.data.shards import ShardDataset

    dataset = ShardDataset(
        cfg.data.source,
        rank=ctx.rank,
        world_size=ctx.world_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        seed=cfg.train.seed,
        resample=cfg.data.resample,
    )
    skip = start_step * cfg.train.accum_steps
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_size=cfg.data.batch_size,
            collate_fn=builder,
            num_workers=cfg.data.num_workers,
            drop_last=True,
        )
        produced = 0
        for batch in loader:
            produced += 1
            if skip > 0:
                skip -= 1
                continue
            yield batch
        if produced == 0:
            raise RuntimeError(
                f"data source {cfg.data.source!r} produced no complete batch "
                f"(batch size {cfg.data.batch_size}); check the shards and the skip counts"
            )
        epoch += 1
