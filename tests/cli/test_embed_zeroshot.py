"""`open-tips embed` and `open-tips zeroshot` on a random tiny checkpoint and real COCO images."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from open_tips.cli import main
from open_tips.inference.zeroshot import TIPS_TEMPLATES, class_embeddings
from tests.cli.conftest import COMMON, NUM_IMAGES, good_images, square_pixels

CLASSES = ["cat", "dog", "person", "car", "pizza"]


def test_embed_npz_skips_corrupt_image(checkpoint, model, images, tmp_path, capsys):
    out = tmp_path / "emb.npz"
    assert (
        main(
            [
                "embed",
                str(images),
                "--checkpoint",
                str(checkpoint),
                "--output",
                str(out),
                "--patch-tokens",
                "--batch-size",
                "2",
                *COMMON,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable image" in printed and "broken.jpg" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npz"]  # no temporary file left behind
    data = np.load(out)
    assert data["paths"].dtype.kind == "U"
    assert [p.split("/")[-1] for p in data["paths"]] == [p.name for p in good_images(images)]
    assert data["cls_web"].shape == data["cls_synthetic"].shape == (NUM_IMAGES, 64)
    assert data["patch_tokens"].shape == (NUM_IMAGES, 4, 4, 64)
    assert all(data[k].dtype == np.float32 for k in ("cls_web", "cls_synthetic", "patch_tokens"))
    pixels = torch.cat([square_pixels(p, 56) for p in good_images(images)])
    with torch.no_grad():
        direct = model.encode_image(pixels)
    for key in ("cls_web", "cls_synthetic", "patch_tokens"):
        np.testing.assert_allclose(data[key], getattr(direct, key).numpy(), atol=1e-5, rtol=1e-5)


def test_embed_safetensors_normalised_with_workers(checkpoint, images, tmp_path):
    plain, workers = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for out, extra in ((plain, []), (workers, ["--workers", "2", "--batch-size", "3"])):
        assert (
            main(
                [
                    "embed",
                    str(images),
                    "--checkpoint",
                    str(checkpoint),
                    "--output",
                    str(out),
                    "--normalize",
                    *extra,
                    *COMMON,
                ]
            )
            == 0
        )
    with safe_open(str(plain), "np") as a, safe_open(str(workers), "np") as b:
        assert set(a.keys()) == {"cls_web", "cls_synthetic"}
        paths = json.loads(a.metadata()["paths"])
        assert len(paths) == NUM_IMAGES and json.loads(a.metadata()["skipped"])[0].endswith("broken.jpg")
        assert json.loads(b.metadata()["paths"]) == paths  # input order kept with background decoding
        for key in ("cls_web", "cls_synthetic"):
            np.testing.assert_allclose(np.linalg.norm(a.get_tensor(key), axis=1), 1.0, atol=1e-5)
            np.testing.assert_allclose(a.get_tensor(key), b.get_tensor(key), atol=1e-6)


def test_embed_keep_aspect(checkpoint, images, tmp_path):
    out = tmp_path / "aspect.npz"
    assert (
        main(
            [
                "embed",
                *map(str, good_images(images)),
                "--checkpoint",
                str(checkpoint),
                "--output",
                str(out),
                "--keep-aspect",
                *COMMON,
            ]
        )
        == 0
    )
    assert np.load(out)["cls_web"].shape == (NUM_IMAGES, 64)
    # landscape and portrait photos give different patch grids: one patch_tokens array cannot hold them
    with pytest.raises(SystemExit):
        main(
            [
                "embed",
                str(images),
                "--checkpoint",
                str(checkpoint),
                "--output",
                str(tmp_path / "x.npz"),
                "--keep-aspect",
                "--patch-tokens",
                *COMMON,
            ]
        )
    assert not (tmp_path / "x.npz").exists()


def _direct_class_embeddings(model, names, templates):
    """The definition, written out: mean over templates of unit text embeddings, renormalised."""
    rows = []
    with torch.no_grad():
        for name in names:
            prompts = [template.format(name) for template in templates]
            rows.append(F.normalize(F.normalize(model.encode_text(prompts), dim=-1).mean(dim=0), dim=0))
    return torch.stack(rows)


def test_class_embeddings_definition(model):
    np.testing.assert_allclose(
        class_embeddings(model, CLASSES, TIPS_TEMPLATES).numpy(),
        _direct_class_embeddings(model, CLASSES, TIPS_TEMPLATES).numpy(),
        atol=1e-5,
    )


@pytest.mark.parametrize("which", ["web", "mean"])
def test_zeroshot_matches_api(checkpoint, model, images, tmp_path, which):
    out = tmp_path / "zs.json"
    assert (
        main(
            [
                "zeroshot",
                str(images),
                "--checkpoint",
                str(checkpoint),
                "--classes",
                ",".join(CLASSES),
                "--cls",
                which,
                "--top-k",
                str(len(CLASSES)),
                "--output",
                str(out),
                *COMMON,
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())
    assert results["classes"] == CLASSES and results["templates"] == TIPS_TEMPLATES
    assert len(results["results"]) == NUM_IMAGES
    assert len(results["skipped"]) == 1 and results["skipped"][0].endswith("broken.jpg")
    classes = _direct_class_embeddings(model, CLASSES, TIPS_TEMPLATES)
    pixels = torch.cat([square_pixels(p, 56) for p in good_images(images)])
    with torch.no_grad():
        out = model.encode_image(pixels)
    web, synthetic = F.normalize(out.cls_web, dim=-1), F.normalize(out.cls_synthetic, dim=-1)
    image = web if which == "web" else F.normalize(web + synthetic, dim=-1)
    expected = (image @ classes.T / model.temperature.detach()).softmax(dim=-1)
    for entry, row in zip(results["results"], expected):
        probabilities = [r["probability"] for r in entry["ranked"]]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert probabilities == sorted(probabilities, reverse=True)
        assert [r["label"] for r in entry["ranked"]] == [CLASSES[i] for i in row.argsort(descending=True)]
        np.testing.assert_allclose(probabilities, row.sort(descending=True).values.numpy(), atol=1e-5)


def test_zeroshot_templates_file_top_k_and_errors(checkpoint, images, tmp_path, capsys):
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\n\na drawing of a {}.\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\ncar\n")
    out = tmp_path / "zs.json"
    assert (
        main(
            [
                "zeroshot",
                str(good_images(images)[0]),
                "--checkpoint",
                str(checkpoint),
                "--classes-file",
                str(classes),
                "--templates",
                str(templates),
                "--top-k",
                "2",
                "--output",
                str(out),
                *COMMON,
            ]
        )
        == 0
    )
    results = json.loads(out.read_text())
    assert results["templates"] == ["a photo of a {}.", "a drawing of a {}."]
    assert len(results["results"][0]["ranked"]) == 2
    templates.write_text("no placeholder\n")
    with pytest.raises(SystemExit):
        main(
            [
                "zeroshot",
                str(images),
                "--checkpoint",
                str(checkpoint),
                "--classes",
                "a,b",
                "--templates",
                str(templates),
                *COMMON,
            ]
        )
    assert "placeholder" in capsys.readouterr().err
