"""Periodic evaluation during training (``train.eval_every``): retrieval R@1/5/10 both ways, kNN and zero-shot
where the data has labels, on ``train.eval_source``, returned as flat ``eval_*`` scalars for the metrics log.

Sources: ``builtin`` (the built-in suite's held-out split, generated from seeds training never uses), WebDataset
validation shards (``.tar`` paths, brace patterns, ``::``-joined lists, ``pipe:`` URLs), or any dataset path
``open-tips eval`` recognises. Shards are read once, the first ``train.eval_max_images`` samples in file order;
with a ``label`` (or ``class``) field in every sample's JSON they are split alternately into a kNN memory and
queries, class names being the label values.

Everything runs through ``open_tips.eval`` (its suites, task registry and feature extraction); this module
only loads the data once and flattens the results. It runs without gradient in eval mode and restores every
random generator afterwards, so a run with periodic evaluation follows the same trajectory as one without
(and resumes exactly).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from open_tips.data.shards import ShardDataset
from open_tips.eval.context import Context
from open_tips.eval.dataset import EvalData, Split
from open_tips.eval.features import dataset_fingerprint, has_text
from open_tips.eval.options import EvalOptions
from open_tips.eval.registry import EvalError, get_suite, get_task, task_names
from open_tips.eval.suite import find_suite
from open_tips.train.checkpoint import rng_state, set_rng_state

log = logging.getLogger("open_tips.train")

_SHARD_HINTS = (".tar", ".tar.gz", ".tgz")


def looks_like_shards(source: str) -> bool:
    text = str(source)
    return (
        text.startswith("pipe:")
        or "::" in text
        or "{" in text
        or any(part.endswith(_SHARD_HINTS) for part in text.split("::"))
    )


def shard_eval_data(source: str, max_images: int):
    """An ``EvalData`` from WebDataset shards: web and synthetic captions per image (the web caption stands
    in for a missing synthetic one, as in training) and, when every sample has one, labels."""
    reader = ShardDataset(source, rank=0, world_size=1, shuffle_buffer=0, shuffle_shards=False)
    samples = []
    for sample in reader:
        samples.append(sample)
        if len(samples) >= max_images:
            break
    if len(samples) < 2:
        raise ValueError(f"train.eval_source={source}: {len(samples)} readable samples (need at least 2)")
    label_key = next((k for k in ("label", "class") if all(k in s for s in samples)), None)

    def split(items: list[dict], tag: str, class_index: dict | None) -> Split:
        keys = [str(s.get("__url__", "")) + "/" + s["__key__"] for s in items]
        return Split(
            images=[s["image"] for s in items],
            key=dataset_fingerprint("shards", tag, *keys),
            labels=[class_index[str(s[label_key])] for s in items] if class_index else None,
            captions_by_cls={
                "web": [[s["web_caption"]] for s in items],
                "synthetic": [
                    [c["text"] for c in s["synthetic_captions"]] or [s["web_caption"]] for s in items
                ],
            },
        )

    info = {"layout": "WebDataset shards", "source": str(source), "images": len(samples)}
    if label_key is None:
        return EvalData(suite="shards", test=split(samples, "test", None), info=info)
    names = sorted({str(s[label_key]) for s in samples})
    index = {name: i for i, name in enumerate(names)}
    info["labels"] = f"JSON field {label_key!r}; even samples are the kNN memory, odd ones the queries"
    return EvalData(
        suite="shards",
        train=split(samples[0::2], "train", index),
        test=split(samples[1::2], "test", index),
        class_names=names,
        info=info,
    )


def _flatten(tasks: dict) -> dict[str, float]:
    """``{"retrieval_web": {"i2t_R@1": x, ...}}`` -> ``{"eval_retrieval_web_i2t_R1": x, ...}`` (numbers only;
    characters TensorBoard does not take in tags are dropped)."""
    out = {}
    for task, metrics in tasks.items():
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[re.sub(r"[^A-Za-z0-9_.\-/]", "", f"eval_{task}_{name}")] = float(value)
    return out


class PeriodicEval:
    """Loads ``source`` once; ``__call__(model)`` returns the ``eval_*`` scalars of ``tasks`` (those the data
    or the model cannot serve are left out, with one log line the first time)."""

    def __init__(
        self,
        source: str,
        tasks: Sequence[str],
        *,
        image_size: int,
        device: torch.device | str | None = None,
        seed: int = 0,
        max_images: int = 200,
    ) -> None:
        unknown = [t for t in tasks if t not in task_names()]
        if unknown:
            raise ValueError(f"train.eval_tasks: unknown {unknown}; known: {', '.join(task_names())}")
        self.tasks = list(tasks)
        self.options = EvalOptions(
            image_size=image_size,
            device=str(device) if device is not None else None,
            seed=seed,
            num_train=max_images,
            num_test=max_images,
            max_images=max_images,
            pictures=False,
            progress=False,
            merge=False,
        )
        self.source = source
        state = rng_state()  # generating or reading the data must not move the training generators
        try:
            if not source or source == "builtin":
                self.data = get_suite("builtin").load(None, self.options)
            elif looks_like_shards(source) and not Path(source).is_dir():
                self.data = shard_eval_data(source, max_images)
            else:
                try:
                    self.data = find_suite(source).load(Path(source), self.options)
                except (EvalError, FileNotFoundError, KeyError, ValueError) as err:
                    raise ValueError(f"train.eval_source={source}: {err}") from err
        finally:
            set_rng_state(state)
        self._reported: set[str] = set()

    def runnable(self, model) -> list[str]:
        names = []
        for name in self.tasks:
            task = get_task(name)
            reason = "the model has no text tower or tokenizer" if task.text and not has_text(model) else None
            reason = reason or next((r for r in map(self.data.missing, task.needs) if r), None)
            if reason:
                if name not in self._reported:
                    log.info("periodic eval: skipping %s on %s (%s)", name, self.source, reason)
                    self._reported.add(name)
                continue
            names.append(name)
        return names

    def __call__(self, model) -> dict[str, float]:
        state = rng_state()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ctx = Context(model, self.data, self.options)
                results: dict = {}
                for name in self.runnable(model):
                    results.update(get_task(name).run(ctx))
        finally:
            model.train(was_training)
            set_rng_state(state)
        return _flatten(results)
