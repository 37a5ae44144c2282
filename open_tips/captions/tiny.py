"""A tiny, randomly initialised PaliGemma (SigLIP + Gemma) with a word-level tokenizer, saved to a folder.

It produces nonsense captions but exercises the real loading, batching and generation code paths without
any download: used by the tests and by `benchmarks/caption.py`, and handy for smoke-testing a set-up.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("a an the photo picture image of with and is are on in at near next to left right top bottom "
         "centre small large red green blue yellow white black cat dog person car table tree sky road "
         "circle square star caption describe rewrite en combine alt-text description into one accurate").split()
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]


def make_tiny_paligemma(directory: str | Path, image_size: int = 28, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        PreTrainedTokenizerFast,
        SiglipImageProcessor,
    )

    directory = Path(directory)
    vocab = {token: index for index, token in enumerate(SPECIAL + sorted(set(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    patches = (image_size // 14) ** 2
    processor = PaliGemmaProcessor(
        image_processor=SiglipImageProcessor(size={"height": image_size, "width": image_size},
                                             image_seq_length=patches),
        tokenizer=tokenizer)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=image_size, patch_size=14,
                           projection_dim=32),
        text_config=dict(model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projection_dim=32,
        vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
