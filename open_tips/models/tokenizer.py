"""The TIPS tokenizer on the `sentencepiece` library (no TensorFlow); part of the model layer, since
checkpoint formats load it next to the weights.

Input is lower-cased, encoded without BOS/EOS, truncated or padded with id 0 to ``max_len``. The
padding mask marks id-0 positions, as the official tokenizer does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
import torch

PAD_ID = 0


class Tokenizer:
    def __init__(self, model_path: str | os.PathLike, max_len: int = 64) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path}")
        self.model_path = path
        self.max_len = max_len
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.Load(str(path))
        except (OSError, RuntimeError) as err:
            raise ValueError(f"{path}: not a SentencePiece model ({err})") from err

    @property
    def vocab_size(self) -> int:
        return self.processor.GetPieceSize()

    @property
    def model_type(self) -> str:
        """``unigram``, ``bpe``, ``word`` or ``char``: the SentencePiece algorithm of the model file.
        transformers' ``Tipsv2Tokenizer`` reads every ``tokenizer.model`` as BPE, so only ``bpe`` models give
        the same ids there."""
        return self._trainer_spec()[0]

    @property
    def byte_fallback(self) -> bool:
        """Whether characters outside the vocabulary become byte pieces (else the unknown id; transformers'
        BPE then drops them, so ids differ on such text)."""
        return self._trainer_spec()[1]

    def _trainer_spec(self) -> tuple[str, bool]:
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.model_path.read_bytes())
        kind = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}.get(proto.trainer_spec.model_type, "unigram")
        return kind, bool(proto.trainer_spec.byte_fallback)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.processor.EncodeAsIds(text.lower()) for text in texts]

    def __call__(
        self, texts: str | Sequence[str], max_len: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (ids LongTensor [B, L], padding_mask BoolTensor [B, L], True = padding)."""
        if isinstance(texts, str):
            texts = [texts]
        length = max_len or self.max_len
        ids = torch.full((len(texts), length), PAD_ID, dtype=torch.long)
        for row, pieces in enumerate(self.encode(texts)):
            pieces = pieces[:length]
            ids[row, : len(pieces)] = torch.tensor(pieces, dtype=torch.long)
        return ids, ids == PAD_ID

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.processor.DecodeIds([i for i in values if i != PAD_ID])

    @staticmethod
    def train(
        texts: Iterable[str],
        model_prefix: str | os.PathLike,
        vocab_size: int = 512,
        max_len: int = 64,
        byte_fallback: bool | None = None,
    ) -> Tokenizer:
        """Trains a small SentencePiece BPE model (pad=0, unk=1, no BOS/EOS) on lower-cased texts; for tests
        and for from-scratch training on a new corpus.

        BPE, as transformers' ``Tipsv2Tokenizer`` reads ``tokenizer.model``: exported models tokenize to the
        same ids there. ``byte_fallback`` (default: when the vocabulary has room for the 256 byte pieces)
        encodes unseen characters as bytes, which both libraries do alike; without it an unseen character is
        the unknown id here and dropped by transformers."""
        texts = [t.lower() for t in texts]
        prefix = Path(model_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        if byte_fallback is None:
            byte_fallback = vocab_size >= 256 + len(set("".join(texts))) + 3
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(texts),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            pad_id=PAD_ID,
            unk_id=1,
            bos_id=-1,
            eos_id=-1,
            model_type="bpe",
            byte_fallback=byte_fallback,
            hard_vocab_limit=False,
            character_coverage=1.0,
            num_threads=1,
            minloglevel=2,
        )
        return Tokenizer(f"{prefix}.model", max_len=max_len)


def find_tokenizer(*folders: str | os.PathLike) -> Path | None:
    """The first ``tokenizer.model`` found in ``folders`` (the released layout keeps it beside the weights)."""
    for folder in folders:
        path = Path(folder) / "tokenizer.model"
        if path.is_file():
            return path
    return None
