import pytest
import torch

from open_tips.data import tokenizer as data_tokenizer
from open_tips.models.tokenizer import Tokenizer, find_tokenizer

CORPUS = [
    "a red circle in the top left of the image",
    "two blue squares next to a green triangle",
    "a photo of a cat sitting on a wooden table",
    "the large yellow star is in front of the small ring",
] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return Tokenizer.train(CORPUS, tmp_path_factory.mktemp("spm") / "tok", vocab_size=80, max_len=16)


def test_lowercase_pad_and_mask(tokenizer):
    ids, padding = tokenizer(["A RED Circle", "a red circle"])
    assert ids.shape == (2, 16) and ids.dtype == torch.long and padding.dtype == torch.bool
    assert torch.equal(ids[0], ids[1])  # lower-cased before encoding
    length = int((~padding[0]).sum())
    assert 0 < length < 16
    assert torch.all(ids[0, length:] == 0) and torch.all(ids[0, :length] != 0)
    assert torch.equal(padding, ids == 0)


def test_no_bos_eos_and_truncation(tokenizer):
    pieces = tokenizer.encode(["a red circle"])[0]
    ids, padding = tokenizer(["a red circle"])
    assert ids[0, : len(pieces)].tolist() == pieces  # nothing prepended or appended
    long_text = " ".join(["the large yellow star"] * 20)
    ids, padding = tokenizer([long_text])
    assert not padding.any() and ids.shape == (1, 16)
    assert ids[0].tolist() == tokenizer.encode([long_text])[0][:16]
    assert tokenizer.decode(tokenizer("a red circle")[0][0]) == "a red circle"


def test_bad_model_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer(tmp_path / "absent.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.model"):
        Tokenizer(bad)


def test_found_beside_the_weights_and_still_importable_from_data(tokenizer, tmp_path):
    assert data_tokenizer.Tokenizer is Tokenizer  # the old import path is the same class, not a copy
    (tmp_path / "run" / "final").mkdir(parents=True)
    assert find_tokenizer(tmp_path / "run" / "final", tmp_path / "run") is None
    (tmp_path / "run" / "tokenizer.model").write_bytes(tokenizer.model_path.read_bytes())
    assert (
        find_tokenizer(tmp_path / "run" / "final", tmp_path / "run") == tmp_path / "run" / "tokenizer.model"
    )
