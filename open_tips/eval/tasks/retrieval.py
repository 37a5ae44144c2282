"""Image-text retrieval, R@1/5/10 both ways, with CLS1, CLS2 and (when every token uses the same captions)
the mean of both unit vectors."""

from __future__ import annotations

from open_tips.eval.features import text_features
from open_tips.eval.registry import Task, register_task
from open_tips.eval.retrieval import positives_from_captions, retrieval_metrics
from open_tips.inference.zeroshot import image_embedding

CLS_TEXT = {"web": "web (CLS1)", "synthetic": "synthetic (CLS2)", "mean": "mean of unit CLS1 and CLS2"}


def run_retrieval(ctx) -> dict:
    test = ctx.split("test")
    features = ctx.features("test")
    if test.captions_by_cls is not None:
        plans = {which: list(test.captions_by_cls[which]) for which in ("web", "synthetic")}
    else:
        captions = list(test.captions)
        plans = {which: captions for which in ("web", "synthetic", "mean")}
    out, embedded = {}, {}
    for which, captions in plans.items():
        texts, _, positives = positives_from_captions(captions)
        key = id(captions)
        if key not in embedded:
            embedded[key] = text_features(ctx.model, texts)
        image = image_embedding(features.cls_web, features.cls_synthetic, which)
        metrics = retrieval_metrics(image, embedded[key], positives=positives)
        metrics["protocol"] = ctx.protocol(
            "retrieval",
            cls=CLS_TEXT[which],
            images=len(captions),
            captions=len(texts),
            similarity="cosine; identical caption texts are positives for every image that has them",
        )
        out[f"retrieval_{which}"] = metrics
    return out


register_task(
    Task(
        "retrieval",
        run_retrieval,
        needs=("captions",),
        text=True,
        order=40,
        summary="image-text retrieval R@1/5/10 both ways (CLS1, CLS2, mean)",
    )
)
