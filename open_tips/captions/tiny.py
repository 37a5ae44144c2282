"""A tiny, randomly initialised PaliGemma (SigLIP vision + Gemma text) saved as a local model directory.

It writes nonsense captions, but it goes through exactly the code paths a real PaliGemma checkpoint does
(AutoProcessor / AutoModelForImageTextToText from a local folder, the processor's ``<image>`` + ``<bos>`` prompt
layout, a SentencePiece Gemma tokenizer with byte fallback, left-padded batched generation), with no download
and in about a second on a CPU. Used by the tests and ``benchmarks/caption.py``; handy for smoke-testing a
set-up before pointing ``open-tips caption`` at a multi-gigabyte checkpoint::

    python -c "from open_tips.captions.tiny import make_tiny_paligemma; make_tiny_paligemma('/tmp/tiny-pg')"
    open-tips caption --model /tmp/tiny-pg --input 'shards/train-{000000..000003}.tar' --output /tmp/out
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable
from pathlib import Path

# Training text for the tokenizer: caption-like words plus the PaliGemma task prefixes used by prompts.py.
SENTENCES = (
    "a photo of a cat sitting on a red sofa to the left of a lamp",
    "two dogs run across the green grass near a white fence in the background",
    "a man in a blue shirt holds an umbrella at the top right of the image",
    "a plate with a sandwich and a cup of coffee on a wooden table",
    "a yellow bus parked next to a tall building on a city street",
    "a bowl of fruit in the centre, bananas on the left, oranges on the right",
    "a person riding a bicycle below a large tree beside the road",
    "caption en",
    "describe en",
    "answer en",
    "rewrite the alt-text and the description into one caption",
)
# Gemma's fixed ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4; PaliGemma adds <image>.
SPECIAL = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}


def _train_tokenizer(directory: Path, sentences: Iterable[str], vocab_size: int) -> None:
    """A Gemma-like SentencePiece BPE model in ``directory/tokenizer.model`` (Gemma's special-token ids)."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences) * 8),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,  # like Gemma's: any text round-trips, nothing maps to <unk>
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece=SPECIAL["pad"],
        eos_piece=SPECIAL["eos"],
        bos_piece=SPECIAL["bos"],
        unk_piece=SPECIAL["unk"],
        user_defined_symbols=["<mask>", "<image>"],
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    (directory / "tokenizer.model").write_bytes(buffer.getvalue())


def make_tiny_paligemma(
    directory: str | Path,
    image_size: int = 28,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 1,
    vocab_size: int = 384,
    sentences: Iterable[str] = SENTENCES,
) -> Path:
    """Builds the model, tokenizer and processor and saves them to ``directory`` (created); returns it.

    ``image_size`` must be a multiple of 14 (SigLIP patch size); it sets the number of image tokens
    ((image_size / 14) ** 2). The output projection's rows for EOS, padding and other non-word tokens are zeroed so
    that greedy decoding of the random model never stops early: every caption is ``max_new_tokens`` long and never empty, which keeps
    tests deterministic and makes throughput figures a worst case (no early stopping)."""
    import torch
    from transformers import (
        GemmaTokenizer,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    if image_size % 14:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size 14")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as spm_dir:
        # transformers converts a folder's SentencePiece tokenizer.model into its tokenizers backend on loading.
        _train_tokenizer(Path(spm_dir), sentences, vocab_size)
        tokenizer = GemmaTokenizer.from_pretrained(spm_dir)
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_seq_length=(image_size // 14) ** 2,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = PaliGemmaProcessor(
        image_processor=image_processor, tokenizer=tokenizer
    )  # adds <loc>/<seg> tokens
    vocab = len(processor.tokenizer)
    heads = max(1, hidden // 16)
    config = PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=14,
            projection_dim=hidden,
        ),
        text_config=dict(
            model_type="gemma",
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=vocab,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        ),
        image_token_index=processor.image_token_id,
        projection_dim=hidden,
        vocab_size=vocab,
        tie_word_embeddings=False,
    )  # tied random embeddings make a 1-layer model repeat its last input token
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Zero logits for control, <loc>/<seg> and byte-fallback tokens: greedy decoding then picks plain word
        # pieces (a zero logit loses to the positive ones), so the nonsense at least reads like words.
        vocab_tokens = processor.tokenizer.convert_ids_to_tokens(list(range(vocab)))
        silent = [i for i, token in enumerate(vocab_tokens) if token is None or token.startswith("<")]
        model.get_output_embeddings().weight[silent] = 0.0
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
