"""Classification on the CLS tokens: kNN and linear probes (CLS1, training split needed) and zero-shot
with prompt templates (CLS1, CLS2 and their mean)."""

from __future__ import annotations

import torch

from open_tips.eval.knn import knn_accuracy
from open_tips.eval.linear import linear_accuracy
from open_tips.eval.registry import Task, register_task
from open_tips.eval.zeroshot import CLS_CHOICES, zeroshot_accuracy


def _labelled(ctx, split: str):
    """(features, labels) of the split's images that have a label (label < 0: none, e.g. a COCO image
    without objects)."""
    labels = torch.as_tensor(list(ctx.split(split).labels), dtype=torch.long)
    features = ctx.features(split)
    keep = labels >= 0
    if bool(keep.all()):
        return features, labels
    return features.subset(keep.nonzero()[:, 0]), labels[keep]


def run_knn(ctx) -> dict:
    o = ctx.options
    (train, train_labels), (test, test_labels) = _labelled(ctx, "train"), _labelled(ctx, "test")
    result = knn_accuracy(
        train.cls_web,
        train_labels,
        test.cls_web,
        test_labels,
        len(ctx.data.class_names),
        k=o.knn_k,
        temperature=o.knn_temperature,
    )
    result["protocol"] = ctx.protocol("knn", cls="web (CLS1)", similarity="cosine", weighting="exp(cos / T)")
    return {"knn": result}


def run_linear(ctx) -> dict:
    o = ctx.options
    (train, train_labels), (test, test_labels) = _labelled(ctx, "train"), _labelled(ctx, "test")
    result = linear_accuracy(
        train.cls_web,
        train_labels,
        test.cls_web,
        test_labels,
        len(ctx.data.class_names),
        optimizer=o.linear_optimizer,
        epochs=o.linear_epochs,
        progress=o.progress,
    )
    result["protocol"] = ctx.protocol(
        "linear",
        cls="web (CLS1)",
        features="standardised with the training mean / std",
        epochs=o.linear_epochs,
    )
    return {"linear": result}


def run_zeroshot(ctx) -> dict:
    names = ctx.data.class_names
    test, test_labels = _labelled(ctx, "test")
    per_cls = zeroshot_accuracy(
        ctx.model, test, test_labels, names, which=CLS_CHOICES, classes=ctx.classes(names)
    )
    cls_text = {"web": "web (CLS1)", "synthetic": "synthetic (CLS2)", "mean": "mean of unit CLS1 and CLS2"}
    out = {}
    for which, metrics in per_cls.items():
        metrics["protocol"] = ctx.protocol(
            "zeroshot",
            cls=cls_text[which],
            class_text="mean of the L2-normalised template embeddings, renormalised",
            num_classes=len(names),
            **ctx.templates_protocol(),
        )
        out[f"zeroshot_{which}"] = metrics
    return out


register_task(
    Task(
        "knn",
        run_knn,
        needs=("labels", "train_labels"),
        order=10,
        summary="weighted kNN on CLS1 (k 20, T 0.07)",
    )
)
register_task(
    Task(
        "linear",
        run_linear,
        needs=("labels", "train_labels"),
        order=20,
        summary="linear classifier on CLS1, lr / weight decay chosen on a held-out 20 %",
    )
)
register_task(
    Task(
        "zeroshot",
        run_zeroshot,
        needs=("labels",),
        text=True,
        order=30,
        summary="zero-shot classification with prompt templates (CLS1, CLS2, mean)",
    )
)
