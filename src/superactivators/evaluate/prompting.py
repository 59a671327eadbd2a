"""The prompting baseline: ask a (vision-)language model whether a concept is present.

Per (sample, concept) the score is ``logit("yes") - logit("no")`` for the next token after a
yes/no question; it is calibrated like every other per-sample baseline (quantiles of the
positive ``cal`` scores, and a free best-F1 threshold). Text runs use any causal LM; image runs
use an image-text-to-text model (e.g. Llama-3.2-Vision) through its processor's chat template.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.datasets import Dataset
from ..encoders.base import resolve_model_path
from ..util.device import pick_device, pick_dtype
from ..util.io import atomic_save_npy

TEXT_TEMPLATE = (
    "{text}\n\nQuestion: Does the text above express or contain {concept}? Answer yes or no.\nAnswer:"
)
IMAGE_TEMPLATE = "Is there {concept} in this image? Answer yes or no."


@dataclass
class PromptConfig:
    """Which model to prompt and how."""

    model: str = ""
    text_template: str = TEXT_TEMPLATE
    image_template: str = IMAGE_TEMPLATE
    yes: str = " yes"
    no: str = " no"
    batch_size: int = 8
    max_length: int = 1024
    device: str = "auto"
    dtype: str = "auto"

    def key(self, extra: object) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "device")}
        return hashlib.sha1(json.dumps([d, extra], sort_keys=True, default=str).encode()).hexdigest()[:12]


def concept_phrase(name: str) -> str:
    """Readable phrase for a concept column: ``color::black-c`` -> ``black (color)``."""
    group, _, base = name.rpartition("::")
    base = base.removesuffix("-c").replace("_", " ").replace("-", " ").strip()
    return f"{base} ({group.replace('_', ' ')})" if group else base


def _first_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer maps {word!r} to no token")
    return int(ids[0])


class TextPrompter:
    """A causal LM answering yes/no questions about texts."""

    def __init__(self, cfg: PromptConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not cfg.model:
            raise ValueError("the prompting baseline needs detect.prompt.model (a causal LM id or folder)")
        self.cfg = cfg
        path = resolve_model_path(cfg.model)
        self.device = pick_device(cfg.device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "left"  # the answer position is the last one for every row
        self.tokenizer.truncation_side = "left"  # keep the question when a text is too long
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(cfg.dtype, self.device))
        self.model.to(self.device).eval()
        self.yes, self.no = _first_token(self.tokenizer, cfg.yes), _first_token(self.tokenizer, cfg.no)

    @torch.inference_mode()
    def score_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.cfg.max_length,
                             return_tensors="pt").to(self.device)
        # left padding: give real positions so absolute-position models see unshifted prompts
        pos = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
        logits = self.model(**enc, position_ids=pos).logits[:, -1, :].float()
        return (logits[:, self.yes] - logits[:, self.no]).cpu().numpy()

    def score(self, texts: Sequence[str], concepts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Scores ``[len(texts), len(concepts)]``; one prompt per (text, concept)."""
        prompts = [self.cfg.text_template.format(text=t, concept=concept_phrase(c)) for t in texts for c in concepts]
        out = np.empty(len(prompts), dtype=np.float32)
        bs = self.cfg.batch_size
        for i in tqdm(range(0, len(prompts), bs), desc="prompt", disable=not progress):
            out[i:i + bs] = self.score_prompts(prompts[i:i + bs])
        return out.reshape(len(texts), len(concepts))


class ImagePrompter:
    """An image-text-to-text model (e.g. Mllama) answering yes/no questions about images."""

    def __init__(self, cfg: PromptConfig):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        path = resolve_model_path(cfg.model)
        self.device = pick_device(cfg.device)
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=pick_dtype(cfg.dtype, self.device))
        self.model.to(self.device).eval()
        tok = self.processor.tokenizer
        self.yes, self.no = _first_token(tok, cfg.yes.strip().capitalize()), _first_token(tok, cfg.no.strip().capitalize())

    @torch.inference_mode()
    def score(self, images: Sequence, concepts: Sequence[str], progress: bool = False) -> np.ndarray:
        out = np.empty((len(images), len(concepts)), dtype=np.float32)
        for i, img in enumerate(tqdm(images, desc="prompt", disable=not progress)):
            for j, c in enumerate(concepts):
                msg = [{"role": "user", "content": [
                    {"type": "image"}, {"type": "text", "text": self.cfg.image_template.format(concept=concept_phrase(c))}]}]
                text = self.processor.apply_chat_template(msg, add_generation_prompt=True)
                enc = self.processor(images=img, text=text, return_tensors="pt").to(self.device)
                logits = self.model(**enc).logits[0, -1].float()
                out[i, j] = float(logits[self.yes] - logits[self.no])
        return out


def prompt_scores(ds: Dataset, cfg: PromptConfig, cache_dir: Path, progress: bool = True) -> np.ndarray:
    """Prompting scores ``[N, C]`` for the whole dataset, cached under ``cache_dir``."""
    path = Path(cache_dir) / f"prompt_{cfg.key([ds.name, ds.concepts, len(ds)])}.npy"
    if path.exists():
        return np.load(path)
    if ds.modality == "text":
        scores = TextPrompter(cfg).score(ds.texts(), ds.concepts, progress)
    else:
        from PIL import Image

        images = [Image.open(ds.image_path(i)).convert("RGB") for i in range(len(ds))]
        scores = ImagePrompter(cfg).score(images, ds.concepts, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(path, scores)
    return scores
