"""Kept so that ``open_tips.data.tokenizer`` imports keep working: the tokenizer is part of the model and lives
in open_tips.models.tokenizer (formats load it, below the data layer)."""

from open_tips.models.tokenizer import PAD_ID, Tokenizer, find_tokenizer

__all__ = ["PAD_ID", "Tokenizer", "find_tokenizer"]
