"""Training data loader: samples/s per CPU core for the B/14 recipe, open_tips vs plain torchvision v2.

The recipe (the ``b14`` preset): per sample one global crop 224 px (scale 0.32-1) and 6 local crops 98 px
(scale 0.05-0.32), random resized crop + horizontal flip, floats in [0, 1]; a 75 % random MIM mask on the
16 x 16 patch grid; the web caption and one synthetic caption tokenised (SentencePiece, 64 tokens). Source:
WebDataset JPEG shards written by ``open-tips make-shards`` from coco-mini.

- ``open_tips``: the training reader itself, ``ShardDataset`` -> ``ShardEpochBatches`` with the batch
  builder the ``b14`` preset builds (``open_tips.train.data._batch_builder``), per-sample seeds included;
- ``plain``: the same recipe written plainly: ``tarfile`` members, ``PIL.Image.open(...).convert("RGB")``,
  ``torchvision.transforms.v2`` (RandomResizedCrop, RandomHorizontalFlip, ToImage, ToDtype) per crop,
  ``torch.rand(...).argsort()`` masks, the same tokenizer.

Both run in this one process with one torch thread (one core), over the same shards, ``--repeats`` passes
in alternating order; samples/s is therefore samples/s per core (decoding workers scale it by their
number: ``data.num_workers``).

    .venv/bin/python benchmarks/loader.py             # all of coco-mini (239 images), 3 passes per side
    .venv/bin/python benchmarks/loader.py --quick     # 32 images, 1 pass: a smoke run
    .venv/bin/python benchmarks/loader.py --upscale 2 # 1280 x 960 photos: reduced-size decoding on vs off
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COCO = Path(os.environ.get("OPEN_TIPS_COCO_MINI") or ROOT.parent / "shared" / "data" / "coco-mini")


def make_upscaled_shards(output: Path, limit: int | None, factor: float, per_shard: int = 64) -> list[str]:
    """coco-mini's train images resized ``factor`` x (bicubic, JPEG quality 90) with their captions: photos
    of the size web datasets often carry (2 -> 1280 x 960)."""
    from PIL import Image

    from open_tips.data.shards import write_shards

    data = json.loads((COCO / "annotations" / "captions_train2017.json").read_text())
    captions: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"])

    def samples():
        for image in data["images"][:limit]:
            pil = Image.open(COCO / "train2017" / image["file_name"]).convert("RGB")
            pil = pil.resize((round(pil.width * factor), round(pil.height * factor)), Image.BICUBIC)
            buffer = io.BytesIO()
            pil.save(buffer, format="JPEG", quality=90)
            texts = captions.get(image["id"]) or ["a photo"]
            yield {
                "__key__": str(image["id"]),
                "image": buffer.getvalue(),
                "image_ext": "jpg",
                "web_caption": texts[0],
                "synthetic_captions": texts[1:],
            }

    return write_shards(samples(), str(output / "shards" / "up-%06d.tar"), max_per_shard=per_shard)


def make_shards(output: Path, limit: int | None, per_shard: int = 64, upscale: float = 1.0) -> list[str]:
    """coco-mini captions -> JPEG shards with open-tips make-shards (the first ``limit`` images)."""
    captions = COCO / "annotations" / "captions_train2017.json"
    if upscale != 1.0 and captions.exists():
        return make_upscaled_shards(output, limit, upscale, per_shard)
    if not captions.exists():  # no coco-mini here (e.g. the GPU machine): procedural 480 px JPEGs instead
        command = [sys.executable, "-m", "open_tips.cli", "make-shards", "--input", f"builtin:{limit or 128}"]
        command += ["--image-size", "480", "--output", str(output / "shards"), "--per-shard", str(per_shard)]
        subprocess.run(command, check=True, capture_output=True)
        return sorted(str(p) for p in (output / "shards").glob("*.tar"))
    if not limit:  # the COCO root: every split with a captions file
        command = [sys.executable, "-m", "open_tips.cli", "make-shards", "--input", str(COCO)]
        command += ["--output", str(output / "shards"), "--per-shard", str(per_shard)]
        subprocess.run(command, check=True, capture_output=True)
        return sorted(str(p) for p in (output / "shards").glob("*.tar"))
    if limit:
        data = json.loads(captions.read_text())
        keep = {image["id"] for image in data["images"][:limit]}
        data["images"] = [image for image in data["images"] if image["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        captions = output / "annotations" / "captions_train2017.json"
        captions.parent.mkdir(parents=True)
        captions.write_text(json.dumps(data))
    command = [sys.executable, "-m", "open_tips.cli", "make-shards", "--input", str(captions)]
    command += ["--image-dir", str(COCO / "train2017"), "--output", str(output / "shards")]
    subprocess.run(command + ["--per-shard", str(per_shard)], check=True, capture_output=True)
    return sorted(str(p) for p in (output / "shards").glob("*.tar"))


def plain_batches(urls: list[str], tokenizer, batch_size: int, cfg):
    """The recipe written plainly with torchvision.transforms.v2."""
    from PIL import Image
    from torchvision.transforms import v2

    d = cfg.data
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    global_t = v2.Compose(
        [
            v2.RandomResizedCrop(d.global_size, scale=tuple(d.global_scale)),
            v2.RandomHorizontalFlip(),
            *to_float,
        ]
    )
    local_t = v2.Compose(
        [v2.RandomResizedCrop(d.local_size, scale=tuple(d.local_scale)), v2.RandomHorizontalFlip(), *to_float]
    )
    patches = (d.global_size // 14) ** 2
    masked = int(round(d.mask_ratio * patches))

    def samples():
        for url in urls:
            with tarfile.open(url) as tar:
                members: dict[str, dict] = {}
                for member in tar:
                    key, ext = member.name.rsplit(".", 1)
                    members.setdefault(key, {})[ext] = tar.extractfile(member).read()
                    if {"jpg", "json"} <= members[key].keys():
                        yield members.pop(key)

    pending = []
    for raw in samples():
        image = Image.open(io.BytesIO(raw["jpg"])).convert("RGB")
        meta = json.loads(raw["json"])
        synthetic = meta.get("synthetic_captions") or [meta["web_caption"]]
        synthetic = synthetic[int(torch.randint(len(synthetic), ()))]
        synthetic = synthetic["text"] if isinstance(synthetic, dict) else synthetic
        mask = torch.zeros(patches, dtype=torch.bool)
        mask[torch.rand(patches).argsort()[:masked]] = True
        local = [local_t(image) for _ in range(d.num_local)]
        pending.append((global_t(image), local, mask, meta["web_caption"], synthetic))
        if len(pending) == batch_size:
            web_ids, web_padding = tokenizer([p[3] for p in pending])
            syn_ids, syn_padding = tokenizer([p[4] for p in pending])
            yield {
                "global_crops": torch.stack([p[0] for p in pending]),
                "local_crops": torch.stack([p[1][m] for m in range(d.num_local) for p in pending]),
                "masks": torch.stack([p[2] for p in pending]),
                "web_ids": web_ids,
                "web_padding": web_padding,
                "synthetic_ids": syn_ids,
                "synthetic_padding": syn_padding,
            }
            pending = []


def open_tips_batches(urls: list[str], tokenizer, batch_size: int, cfg):
    from open_tips.data.shards import ShardDataset
    from open_tips.train.data import ShardEpochBatches, _batch_builder, decode_crops

    dataset = ShardDataset(  # as training reads shards
        urls,
        rank=0,
        world_size=1,
        shuffle_shards=False,
        image_type="tensor",
        decode_crops=decode_crops(cfg.data),
    )
    for batch in ShardEpochBatches(dataset, _batch_builder(cfg, tokenizer), batch_size, seed=0):
        if "__reader_counts__" not in batch:
            yield batch


def _json_members(urls: list[str]):
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    yield tar.extractfile(member)


KEYS = (
    "global_crops",
    "local_crops",
    "masks",
    "web_ids",
    "web_padding",
    "synthetic_ids",
    "synthetic_padding",
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="b14", help="training preset whose data recipe is used")
    parser.add_argument(
        "--images",
        type=int,
        default=0,
        help="first N coco-mini images (0: all; without coco-mini: 128 procedural)",
    )
    parser.add_argument(
        "--upscale",
        type=float,
        default=1.0,
        help="resize the coco-mini images by this factor first (2: 1280 x 960, where reduced-size JPEG "
        "decoding applies); adds an 'open_tips_full' side with data.reduced_decode=false",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the shards per side")
    parser.add_argument("--goal", type=float, default=150.0, help="samples/s per core")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="32 images, 1 pass")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 32, 1

    from open_tips.models.tokenizer import Tokenizer
    from open_tips.train.config import load_config

    torch.set_num_threads(1)  # one core: the rate per core
    cfg = load_config(args.preset)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        urls = make_shards(work, args.images or None, upscale=args.upscale)
        texts = [json.loads(m.read()).get("web_caption", "") for m in _json_members(urls)]
        Tokenizer.train(texts * 4, work / "tok", vocab_size=300, max_len=64)
        tokenizer = Tokenizer(work / "tok.model", max_len=64)
        counts: dict[str, int] = {}
        first: dict[str, dict] = {}

        def side(name, make):
            def run():
                count = 0
                for batch in make(urls, tokenizer, args.batch_size, cfg):
                    first.setdefault(name, batch)
                    count += batch["global_crops"].shape[0]
                counts[name] = count

            return run

        makers = {"open_tips": open_tips_batches, "plain": plain_batches}
        if args.upscale != 1.0:
            full_cfg = load_config(args.preset, overrides=["data.reduced_decode=false"])
            makers["open_tips_full"] = lambda u, t, b, _cfg: open_tips_batches(u, t, b, full_cfg)
        for make in makers.values():  # warm-up: imports, first-call allocations
            next(iter(make(urls, tokenizer, args.batch_size, cfg)))
        times = _bench.paired({name: side(name, make) for name, make in makers.items()}, args.repeats)
    rate = {name: counts[name] / _bench.median(t) for name, t in times.items()}
    result = {
        "benchmark": "loader",
        "preset": args.preset,
        "upscale": args.upscale,
        "recipe": f"1 x {cfg.data.global_size} + {cfg.data.num_local} x {cfg.data.local_size} px, mask "
        f"{cfg.data.mask_ratio}, 2 captions x 64 tokens",
        "samples_per_pass": counts,
        "samples_per_s_per_core": rate,
        # the fastest pass: the least disturbed by other processes on a shared CPU
        "best_pass_samples_per_s_per_core": {n: counts[n] / min(t) for n, t in times.items()},
        "ratio_vs_plain": _bench.paired_ratio(times, "open_tips", "plain"),
        **(
            {"ratio_reduced_vs_full_decode": _bench.paired_ratio(times, "open_tips", "open_tips_full")}
            if "open_tips_full" in times
            else {}
        ),
        "goal_per_core": args.goal,
        "shapes": {n: {k: list(b[k].shape) for k in KEYS} for n, b in first.items()},
        "dtypes": {n: {k: str(b[k].dtype) for k in KEYS} for n, b in first.items()},
        "load": _bench.load_note(1),
    }
    print(f"loader ({result['recipe']}), batch {args.batch_size}, 1 thread, {args.repeats} passes per side")
    for name, value in rate.items():
        best = result["best_pass_samples_per_s_per_core"][name]
        print(
            f"{name:14} {value:7.1f} samples/s/core, best pass {best:7.1f}  ({counts[name]} samples a pass)"
        )
    if "ratio_reduced_vs_full_decode" in result:
        print(f"reduced-size decoding: {result['ratio_reduced_vs_full_decode']:.3f}x the full decode")
    print(
        f"ratio open_tips/plain {result['ratio_vs_plain']:.3f}x; goal {args.goal:.0f} samples/s/core: "
        f"{'met' if rate['open_tips'] >= args.goal else 'not met'}\n{result['load']}"
    )
    _bench.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
