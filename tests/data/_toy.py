"""A tiny stand-in tokenizer for data tests (the real one is open_tips.data.tokenizer.Tokenizer)."""

import zlib

import torch


def toy_tokenizer(texts, max_len: int = 12):
    """Words hashed (stably) to ids 1..99, padded with 0 to ``max_len``: (ids long [B, L], padding bool [B, L])."""
    ids = torch.zeros(len(texts), max_len, dtype=torch.long)
    for row, text in enumerate(texts):
        words = text.lower().split()[:max_len]
        if words:
            ids[row, : len(words)] = torch.tensor([zlib.crc32(w.encode()) % 99 + 1 for w in words])
    return ids, ids == 0
