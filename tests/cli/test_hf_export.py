"""An open_tips export in transformers, offline: AutoProcessor, Tipsv2Tokenizer ids, and the
zero-shot-image-classification pipeline against `open-tips zeroshot` with the same template."""

from __future__ import annotations

import json
import warnings

import pytest
import sentencepiece as spm
import torch
from PIL import Image

import open_tips
from open_tips.cli import main
from open_tips.data.tokenizer import Tokenizer
from tests.cli.conftest import good_images

transformers = pytest.importorskip("transformers")

CORPUS = [
    "a photo of a cat sitting on a wooden table",
    "two dogs running on the beach, next to a red car",
    "a pizza with cheese and tomatoes.",
    "a person riding a bicycle in the city",
    "itap of a bad origami art video game the large small many photos",
] * 20
# fixed sentences: upper case, punctuation, repeated spaces, words and characters never seen in training
SENTENCES = [
    "a photo of a cat.",
    "A PHOTO OF A DOG!",
    "Two  dogs,   running... on the beach?",
    "zebra xylophone quokka",
    "ünïcödé café, naïve façade: 日本語 🙂",
    "tab\tseparated\nlines",
    "a photo of many pizzas.",
    "",
]
CLASSES = ["cat", "dog", "person", "car", "pizza"]


def _export(folder, tokenizer, seed=7):
    torch.manual_seed(seed)
    model = open_tips.create_model("tiny", tokenizer=tokenizer).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn_like(param))
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    tokenizer = Tokenizer.train(CORPUS, root / "tok" / "tokenizer", vocab_size=512, max_len=32)
    assert tokenizer.model_type == "bpe" and tokenizer.byte_fallback
    _export(root / "hf", tokenizer)
    return root / "hf"


def test_export_has_processor_files(export):
    names = {p.name for p in export.iterdir()}
    assert {
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer_config.json",
        "tokenizer.model",
    } <= names
    images = json.loads((export / "preprocessor_config.json").read_text())
    assert images["size"] == {"height": 56, "width": 56} and images["do_normalize"] is False
    processor = transformers.AutoProcessor.from_pretrained(export)
    assert type(processor).__name__ == "Tipsv2Processor"
    assert type(processor.tokenizer).__name__ == "Tipsv2Tokenizer"
    pixels = processor(images=Image.new("RGB", (90, 70), (255, 0, 0)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 56, 56)
    assert pixels[0, 0].min() == pytest.approx(1.0) and pixels[0, 1:].max() == 0  # [0, 1], no mean/std


def test_tokenizer_ids_equal_transformers(export):
    ours = open_tips.load_pretrained(export).tokenizer
    theirs = transformers.AutoTokenizer.from_pretrained(export)
    for sentence in SENTENCES:
        assert ours.encode([sentence])[0] == theirs(sentence, add_special_tokens=False)["input_ids"], sentence
    ids, padding = ours(SENTENCES)
    batch = theirs(SENTENCES, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], ids)
    assert torch.equal(batch["attention_mask"].bool(), ~padding)


def test_unigram_model_loads_and_warns_on_export(tmp_path):
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter([t.lower() for t in CORPUS]),
        model_prefix=str(tmp_path / "uni"),
        vocab_size=80,
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        model_type="unigram",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tokenizer = Tokenizer(tmp_path / "uni.model", max_len=32)
    assert tokenizer.model_type == "unigram" and tokenizer("a photo of a cat")[0].shape == (1, 32)
    with pytest.warns(UserWarning, match="unigram"):
        _export(tmp_path / "hf", tokenizer)
    assert open_tips.load_pretrained(tmp_path / "hf").tokenizer is not None
    with warnings.catch_warnings():  # a BPE model exports without a warning
        warnings.simplefilter("error")
        _export(tmp_path / "hf2", Tokenizer.train(CORPUS, tmp_path / "bpe", vocab_size=80, max_len=32))


def _zeroshot_cli(export, inputs, tmp_path, template_file):
    out = tmp_path / "zs.json"
    code = main(
        [
            "zeroshot",
            *map(str, inputs),
            "--checkpoint",
            str(export),
            "--classes",
            ",".join(CLASSES),
            "--templates",
            str(template_file),
            "--cls",
            "web",
            "--top-k",
            str(len(CLASSES)),
            "--device",
            "cpu",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())["results"]
    return {r["image"]: {x["label"]: x["probability"] for x in r["ranked"]} for r in results}


def _pipeline(export, inputs):
    pipe = transformers.pipeline("zero-shot-image-classification", model=str(export), device="cpu")
    return {
        str(path): {
            x["label"]: x["score"]
            for x in pipe(str(path), candidate_labels=CLASSES, hypothesis_template="a photo of a {}.")
        }
        for path in inputs
    }


def test_pipeline_matches_zeroshot_command(export, images, tmp_path):
    template = tmp_path / "template.txt"
    template.write_text("a photo of a {}.\n")
    # images already at the model's 56 px: no resize on either side, so the numbers agree to float precision
    sized = []
    for i, path in enumerate(good_images(images)):
        target = tmp_path / f"sized{i}.png"
        Image.open(path).convert("RGB").resize((56, 56), Image.BILINEAR).save(target)
        sized.append(target)
    ours, theirs = _zeroshot_cli(export, sized, tmp_path, template), _pipeline(export, sized)
    assert ours.keys() == theirs.keys()
    spread = max(max(p.values()) - min(p.values()) for p in ours.values())
    assert spread > 0.05  # the probabilities are not uniform, so agreement means something
    for key in ours:
        for label in CLASSES:
            assert ours[key][label] == pytest.approx(theirs[key][label], abs=1e-5)
    # full-size photos: transformers resizes uint8 pixels, open-tips resizes floats; the difference is
    # rounding to 1/255, far below what changes a ranking
    photos = good_images(images)
    ours, theirs = _zeroshot_cli(export, photos, tmp_path, template), _pipeline(export, photos)
    for key in ours:
        assert max(ours[key], key=ours[key].get) == max(theirs[key], key=theirs[key].get)
        for label in CLASSES:
            assert ours[key][label] == pytest.approx(theirs[key][label], abs=2e-3)
