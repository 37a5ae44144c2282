"""The captioner: an HF transformers image-text-to-text model loaded from local files, batched generation,
caption cleaning.

Loading never touches the network (``local_files_only=True``): ``--model`` is a checkpoint directory, or a hub
name already in the local HF cache (``huggingface-cli download`` puts it there).
"""

from __future__ import annotations

import os
import re
import unicodedata
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from open_tips.captions.prompts import STYLES, CaptionTemplate

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DecodeSettings:
    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_caption_tokens: int | None = 64  # None or 0: no cap

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=self.do_sample
        )
        if self.do_sample:  # only then: greedy/beam search with temperature set makes transformers warn
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CaptionModel(Protocol):
    """What the pipeline needs from a captioner (tests substitute stubs)."""

    name: str
    prompt_style: str

    def generate(
        self, images: list[Image.Image], prompts: list[str], settings: DecodeSettings
    ) -> list[str]: ...


def default_device() -> torch.device:
    if torch.cuda.is_available():
        # Under torchrun every process sees all GPUs: take the local rank's one, not cuda:0 for all.
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # CPU bf16 matmuls are slow on most CPUs and generation quality is the same in fp32


def model_display_name(model: str) -> str:
    """The name recorded in each caption's ``model`` field: a hub id where the path reveals one (an HF cache
    snapshot ``.../models--google--paligemma2-3b-mix-448/snapshots/<hash>``), else the folder name."""
    path = Path(model)
    if not path.exists():
        return model  # a hub name resolved from the local cache
    path = path.resolve()
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--") :].replace("--", "/")
    return path.name


def _load_model(model: str, dtype: torch.dtype):
    import transformers

    errors = []
    # AutoModelForImageTextToText covers PaliGemma, Gemma 3, LLaVA, Qwen-VL, BLIP, GIT, ... in transformers 5;
    # AutoModelForVision2Seq is its older name (transformers < 5), still the only one some releases register.
    for auto_name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        auto = getattr(transformers, auto_name, None)
        if auto is None:
            continue
        try:
            return auto.from_pretrained(model, local_files_only=True, dtype=dtype)
        except ValueError as err:  # "Unrecognized configuration class ..." -> try the next auto class
            errors.append(f"{auto_name}: {err}")
    raise ValueError(
        f"{model} is not an image-text-to-text model transformers can load:\n" + "\n".join(errors)
    )


class Captioner:
    """An HF image-to-text model and its processor, from local files, generating captions for batches."""

    def __init__(
        self,
        model: str,
        device: str | torch.device | None = None,
        dtype: str = "auto",
        prompt_style: str = "auto",
        name: str | None = None,
    ) -> None:
        from transformers import AutoProcessor

        if not Path(model).exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
            raise FileNotFoundError(f"model directory {model} does not exist")
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        try:
            self.processor = AutoProcessor.from_pretrained(model, local_files_only=True)
            self.model = _load_model(model, self.dtype).to(self.device).eval()
        except OSError as err:  # not on disk: say how to get it, since nothing is downloaded here
            raise FileNotFoundError(
                f"cannot load {model!r} from local files ({err}). Download it first, e.g. "
                f"`huggingface-cli download {model} --local-dir /models/NAME`, then pass --model /models/NAME"
            ) from err
        self.name = name or model_display_name(model)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.prompt_style = self._detect_style() if prompt_style == "auto" else prompt_style
        if self.prompt_style not in STYLES:
            raise ValueError(f"prompt style {prompt_style!r} not in {STYLES}")
        self.encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        if not self.encoder_decoder and hasattr(self.tokenizer, "padding_side"):
            self.tokenizer.padding_side = (
                "left"  # batched decoder-only generation continues from the right end
            )
        self.pad_token_id = getattr(self.tokenizer, "pad_token_id", None)
        if self.pad_token_id is None:
            self.pad_token_id = getattr(self.tokenizer, "eos_token_id", None)

    @property
    def image_size_hint(self) -> int | None:
        """The processor's input side in pixels, if it says (lets JPEG decoding skip needless resolution)."""
        size = getattr(getattr(self.processor, "image_processor", None), "size", None) or {}
        sides = [
            v
            for k, v in dict(size).items()
            if k in ("height", "width", "shortest_edge") and isinstance(v, int)
        ]
        return max(sides) if sides else None

    def _detect_style(self) -> str:
        model_type = getattr(self.model.config, "model_type", "")
        if model_type == "paligemma" or type(self.processor).__name__.startswith("PaliGemma"):
            return "prefix"
        if getattr(self.processor, "chat_template", None):
            return "chat"
        return "raw"

    def layout(self, text: str) -> str:
        """A rendered template -> the text the processor receives, per the model's prompt conventions."""
        image_token = getattr(self.processor, "image_token", None)
        # Conditioning text comes from the web: a literal "<image>" or "<eos>" in an alt-text must not become
        # a control token (an extra image placeholder breaks the whole batch).
        for special in {image_token, *getattr(self.tokenizer, "all_special_tokens", [])} - {None, ""}:
            text = text.replace(special, " ")
        text = " ".join(text.split())
        if self.prompt_style == "chat":
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if self.prompt_style == "prefix":
            # PaliGemma: "<image>" first (the processor expands it to image_seq_length tokens and adds <bos>
            # after it and "\n" at the end); without it the processor guesses and logs a warning per batch.
            return f"{image_token or '<image>'}{text}"
        if image_token and image_token not in text:
            return f"{image_token}{text}"
        return text

    def template_prompt(
        self, template: CaptionTemplate, web: str | None = None, synthetic: str | None = None
    ) -> str:
        return template.render(self.prompt_style, web, synthetic)

    @torch.inference_mode()
    def generate(self, images: list[Image.Image], prompts: list[str], settings: DecodeSettings) -> list[str]:
        """Captions for (image, rendered prompt) pairs, cleaned (see ``clean_caption``)."""
        texts = [self.layout(p) for p in prompts]
        extra: dict[str, Any] = {}
        bos = getattr(self.tokenizer, "bos_token", None)
        if self.prompt_style == "chat" and bos and all(t.startswith(bos) for t in texts):
            extra["add_special_tokens"] = False  # the chat template wrote <bos> already: not a second one
        with warnings.catch_warnings():
            # PaliGemma's processor builds training labels with np.array(tensor): numpy 2 warns, harmlessly.
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True, **extra)
        inputs.pop("labels", None)  # PaliGemma's processor adds training labels
        inputs = {
            k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        output = self.model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=self.pad_token_id)
        prompt_ids = inputs.get("input_ids")
        if (
            prompt_ids is not None
            and output.shape[1] >= prompt_ids.shape[1]
            and torch.equal(output[:, : prompt_ids.shape[1]], prompt_ids)
        ):
            output = output[:, prompt_ids.shape[1] :]  # decoder-only models return prompt + continuation
        decoded = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return [
            clean_caption(text, prompt, self.tokenizer, settings.max_caption_tokens)
            for text, prompt in zip(decoded, prompts)
        ]


_CONTROL = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f-\u009f\ufffd]")


def clean_caption(text: str, prompt: str = "", tokenizer: Any = None, max_tokens: int | None = None) -> str:
    """Removes an echoed prompt (models like BLIP return it, as may any model when slicing did not apply),
    control characters and U+FFFD, normalises whitespace, and caps the length at ``max_tokens`` tokens of the
    captioner's tokenizer, cutting back to a whole word."""
    text = _CONTROL.sub(" ", unicodedata.normalize("NFC", text))
    text = " ".join(text.split())
    echo = " ".join(prompt.split())
    if echo and text.lower().startswith(echo.lower()):
        text = text[len(echo) :].lstrip(" :,-\n")
    if tokenizer is not None and max_tokens and text:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens:
            kept = tokenizer.decode(ids[:max_tokens], skip_special_tokens=True).strip()
            if not text.startswith(kept + " ") and " " in kept:
                kept = kept.rsplit(" ", 1)[0]  # the cut fell inside a word: drop the partial word
            text = kept.rstrip(" ,;:-")
    return text.strip()
