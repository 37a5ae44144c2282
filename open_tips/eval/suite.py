"""Evaluation suites: the built-in procedural benchmark (exact masks, depth, labels) and COCO-mini."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from open_tips.eval.depth import depth_probe
from open_tips.eval.features import extract_features, text_features
from open_tips.eval.knn import knn_accuracy
from open_tips.eval.linear import linear_accuracy
from open_tips.eval.normals import normals_from_depth, normals_probe
from open_tips.eval.report import write_results
from open_tips.eval.retrieval import retrieval_metrics
from open_tips.eval.segmentation import IGNORE, rasterise_coco, resize_mask, segmentation_probe
from open_tips.eval.zeroshot import zeroshot_accuracy
from open_tips.eval.zeroshot_seg import zeroshot_segmentation
from open_tips.inference.zeroshot import TIPS_TEMPLATES

log = logging.getLogger(__name__)
ALL_TASKS = ("knn", "linear", "zeroshot", "retrieval", "seg", "depth", "normals", "zeroshot-seg")


def _resize_depth(depth: np.ndarray, size: int) -> torch.Tensor:
    tensor = torch.from_numpy(depth)[None, None]
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="nearest")[0, 0]


def _has_text(model) -> bool:
    return model.text is not None and model.tokenizer is not None


def evaluate_builtin(model, output_dir: str | Path | None = None, image_size: int | None = None,
                     device: torch.device | str = "cpu", seed: int = 0, num_train: int = 300, num_test: int = 200,
                     tasks: tuple[str, ...] = ALL_TASKS, cache_dir: str | Path | None = None, key: str = "",
                     pictures: bool = True, probe_epochs: int = 40) -> dict:
    """Runs the built-in suite on held-out procedural data (seeds distinct from training's)."""
    from open_tips.data.builtin import SHAPE_CLASSES, BuiltinShapes

    size = image_size or model.cfg.image_size
    train_data = BuiltinShapes(num_train, 112, seed=seed + 10_000, caption_noise=0.5)
    test_data = BuiltinShapes(num_test, 112, seed=seed + 20_000, caption_noise=0.5)
    train = [train_data[i] for i in range(num_train)]
    test = [test_data[i] for i in range(num_test)]
    common = dict(size=size, device=device, value_trick="zeroshot-seg" in tasks, cache_dir=cache_dir)
    train_features = extract_features(model, [s["image"] for s in train], key=f"{key}builtin-train-{size}" if key else None,
                                      desc="train features", **common)
    test_features = extract_features(model, [s["image"] for s in test], key=f"{key}builtin-test-{size}" if key else None,
                                     desc="test features", **common)
    train_labels = torch.tensor([s["main_label"] - 1 for s in train])
    test_labels = torch.tensor([s["main_label"] - 1 for s in test])
    num_classes = len(SHAPE_CLASSES)
    results: dict = {"suite": "builtin", "image_size": size, "num_train": num_train, "num_test": num_test,
                     "tasks": {}}
    out = results["tasks"]
    if "knn" in tasks:
        out["knn"] = knn_accuracy(train_features["cls_web"], train_labels, test_features["cls_web"], test_labels,
                                  num_classes, k=10)
    if "linear" in tasks:
        out["linear"] = linear_accuracy(train_features["cls_web"], train_labels, test_features["cls_web"],
                                        test_labels, num_classes)
    text_ok = _has_text(model)
    if "zeroshot" in tasks and text_ok:
        for which in ("web", "synthetic", "mean"):
            out[f"zeroshot_{which}"] = zeroshot_accuracy(model, test_features, test_labels, SHAPE_CLASSES,
                                                         TIPS_TEMPLATES, which)
    if "retrieval" in tasks and text_ok:
        for kind, cls_key in (("web", "cls_web"), ("synthetic", "cls_synthetic")):
            captions = ([s["web_caption"] for s in test] if kind == "web"
                        else [s["synthetic_captions"][1]["text"] for s in test])
            out[f"retrieval_{kind}"] = retrieval_metrics(test_features[cls_key], text_features(model, captions),
                                                         torch.arange(num_test))
    train_masks = torch.stack([resize_mask(s["segmentation"], size) for s in train])
    test_masks = torch.stack([resize_mask(s["segmentation"], size) for s in test])
    if "seg" in tasks:
        out["seg"] = segmentation_probe(train_features, train_masks, test_features, test_masks, num_classes + 1,
                                        epochs=probe_epochs)
    train_depth = torch.stack([_resize_depth(s["depth"], size) for s in train])
    test_depth = torch.stack([_resize_depth(s["depth"], size) for s in test])
    if "depth" in tasks:
        out["depth"] = depth_probe(train_features, train_depth, test_features, test_depth, epochs=probe_epochs)
    if "normals" in tasks:
        out["normals"] = normals_probe(train_features, normals_from_depth(train_depth), test_features,
                                       normals_from_depth(test_depth), epochs=probe_epochs)
    if "zeroshot-seg" in tasks and text_ok:
        out["zeroshot_seg"] = zeroshot_segmentation(model, test_features["value_tokens"], test_masks,
                                                    ["background"] + SHAPE_CLASSES, TIPS_TEMPLATES)
    if output_dir is not None:
        write_results(results, output_dir)
        if pictures:
            write_pictures(model, test[:4], size, Path(output_dir), text_ok)
    return results


def write_pictures(model, samples: list[dict], size: int, output_dir: Path, with_text: bool) -> None:
    """PCA feature maps and zero-shot segmentation next to the ground truth, for a few test images."""
    from PIL import Image

    from open_tips.data.builtin import SHAPE_CLASSES
    from open_tips.eval.features import to_pixels
    from open_tips.inference.dense import palette, pca_rgb, segmentation_logits
    from open_tips.inference.zeroshot import class_embeddings

    names = ["background"] + SHAPE_CLASSES
    colours = palette(len(names))
    device = next(model.parameters()).device
    classes = class_embeddings(model, names, TIPS_TEMPLATES) if with_text else None
    tiles = []
    for sample in samples:
        pixels = to_pixels(sample["image"], size)[None].to(device)
        with torch.no_grad():
            patches = model.encode_image(pixels).patch_tokens[0].float().cpu()
            row = [sample["image"].resize((size, size)),
                   Image.fromarray(pca_rgb(patches)).resize((size, size), Image.NEAREST),
                   Image.fromarray(colours[resize_mask(sample["segmentation"], size).numpy()])]
            if classes is not None:
                labels = segmentation_logits(model, pixels, classes)[0].argmax(0).cpu().numpy()
                row.append(Image.fromarray(colours[labels]))
        tiles.append(row)
    canvas = Image.new("RGB", (size * len(tiles[0]), size * len(tiles)), (255, 255, 255))
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            canvas.paste(tile.convert("RGB"), (c * size, r * size))
    canvas.save(output_dir / "pictures.png")


def evaluate_coco(model, coco_root: str | Path, output_dir: str | Path | None = None, image_size: int = 224,
                  device: torch.device | str = "cpu", tasks: tuple[str, ...] = ALL_TASKS,
                  cache_dir: str | Path | None = None, key: str = "", max_images: int | None = None,
                  probe_epochs: int = 40) -> dict:
    """COCO-mini: retrieval with the 5 captions per image (val2017); segmentation probe and zero-shot
    segmentation on masks rasterised from the instance annotations (fit on train2017, test on val2017);
    kNN / linear / zero-shot classification on each image's largest category."""
    from open_tips.data.decode import decode_image
    from open_tips.eval.retrieval import read_coco_captions

    root = Path(coco_root)
    annotations = root / "annotations"
    results: dict = {"suite": "coco-mini", "image_size": image_size, "tasks": {}}
    out = results["tasks"]

    def load(paths):
        return [decode_image(Path(p).read_bytes()) for p in paths]

    split_data = {}
    for split in ("train2017", "val2017"):
        pairs, names = rasterise_coco(annotations / f"instances_{split}.json", root / split)
        pairs = [(p, m) for p, m in pairs if p.exists()][:max_images]
        split_data[split] = (pairs, names)
    names = split_data["val2017"][1]
    features = {}
    for split, (pairs, _) in split_data.items():
        features[split] = extract_features(model, load([p for p, _ in pairs]), image_size, device=device,
                                           value_trick="zeroshot-seg" in tasks, cache_dir=cache_dir,
                                           key=f"{key}coco-{split}-{image_size}" if key else None, desc=split)
    masks = {split: torch.stack([resize_mask(m, image_size) for _, m in pairs])
             for split, (pairs, _) in split_data.items()}

    def main_label(mask: torch.Tensor) -> int:
        counts = torch.bincount(mask[(mask != IGNORE) & (mask > 0)].flatten(), minlength=len(names))
        return int(counts.argmax()) if counts.sum() > 0 else 0

    labels = {split: torch.tensor([main_label(m) for m in masks[split]]) for split in masks}
    if "knn" in tasks:
        out["knn"] = knn_accuracy(features["train2017"]["cls_web"], labels["train2017"],
                                  features["val2017"]["cls_web"], labels["val2017"], len(names), k=10)
    if "linear" in tasks:
        out["linear"] = linear_accuracy(features["train2017"]["cls_web"], labels["train2017"],
                                        features["val2017"]["cls_web"], labels["val2017"], len(names))
    text_ok = _has_text(model)
    if "zeroshot" in tasks and text_ok:
        has_object = labels["val2017"] > 0
        subset = {k: v[has_object] for k, v in features["val2017"].items()}
        out["zeroshot_mean"] = zeroshot_accuracy(model, subset, labels["val2017"][has_object] - 1, names[1:],
                                                 TIPS_TEMPLATES, "mean")
    if "retrieval" in tasks and text_ok:
        captioned = read_coco_captions(annotations / "captions_val2017.json")
        captioned = [(root / "val2017" / name, caps) for name, caps in captioned
                     if (root / "val2017" / name).exists()][:max_images]
        image_features = extract_features(model, load([p for p, _ in captioned]), image_size, device=device,
                                          cache_dir=cache_dir, desc="retrieval images",
                                          key=f"{key}coco-retrieval-{image_size}" if key else None)
        texts = [c for _, caps in captioned for c in caps]
        owner = torch.tensor([i for i, (_, caps) in enumerate(captioned) for _ in caps])
        text_emb = text_features(model, texts)
        for which in ("cls_web", "cls_synthetic"):
            out[f"retrieval_{which.split('_')[1]}"] = retrieval_metrics(image_features[which], text_emb, owner)
    if "seg" in tasks:
        out["seg"] = segmentation_probe(features["train2017"], masks["train2017"], features["val2017"],
                                        masks["val2017"], len(names), epochs=probe_epochs)
    if "zeroshot-seg" in tasks and text_ok:
        out["zeroshot_seg"] = zeroshot_segmentation(model, features["val2017"]["value_tokens"], masks["val2017"],
                                                    names, TIPS_TEMPLATES)
    if output_dir is not None:
        write_results(results, output_dir)
    return results
