"""The prompting baseline: ask a (vision-)language model whether a concept is present.

Two protocols, two detection methods:

- ``prompt`` (``protocol="margin"``): per (sample, concept) the score is
  ``logit(yes) - logit(no)`` for the first answer token after a yes/no question; it is
  calibrated like every other per-sample baseline (quantiles of the positive ``cal`` scores, and
  a free best-F1 threshold). Only ``cal`` and ``test`` samples are asked (``train`` is NaN).
- ``prompt_seed`` (``protocol="seed"``): the seed study's protocol
  (``scripts/extract_prompt_concepts.py`` / ``LLMNet`` in BrachioLab/SuperActivators): the
  seed's own instruction (a text passage "which may contain concepts from the list [...]",
  "output just the word 'Yes' if the text contains C, otherwise 'No' after 'FINAL ANSWER:'"),
  a greedy generated answer, parsed after the last ``FINAL ANSWER:`` marker and counted as
  present iff it contains ``Yes`` (case-sensitive, as the seed). Only ``test`` samples are asked,
  and the 0/1 answers are scored as they are (no threshold), like the seed's ``eval``.

Models with a chat template (instruction-tuned ones such as SmolLM2-Instruct) are asked
through it (``chat="auto"``); the margin protocol then reads the capitalised ``Yes`` / ``No``
tokens that open an assistant reply. Text runs use any causal LM; image runs an
image-text-to-text model (Llama-3.2-Vision, Qwen2.5-VL, ...) through its processor (for
Qwen2-VL-style models without torchvision, through its tokenizer and image processor, see
:class:`ImageTokenProcessor`).

For the margin protocol the C questions about one text share their prefix (everything up to
the end of the text): it is run once, its key/value cache repeated for the C suffixes, and
only the answer positions go through the LM head.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..data.datasets import Dataset
from ..encoders.base import resolve_model_path
from ..util.device import pick_device, pick_dtype
from ..util.io import atomic_save_npy, atomic_write_bytes, stable_hash

TEXT_TEMPLATE = (
    "{text}\n\nQuestion: Does the text above express or contain {concept}? Answer yes or no.\nAnswer:"
)
CHAT_TEXT_TEMPLATE = "{text}\n\nQuestion: Does the text above express or contain {concept}? Answer Yes or No."
IMAGE_TEMPLATE = "Is there {concept} in this image? Answer yes or no."
# the seed's LLMNet wording (input_desc / output_desc of extract_prompt_concepts.py)
SEED_TEXT_INSTRUCTION = (
    "\nThe following input is a text passage which may contain concepts from the list {names}. "
    "Examine it and then output just the word 'Yes' if the text contains {concept}, otherwise 'No' "
    "after 'FINAL ANSWER:'. If unsure of the answer, try to choose the best option."
)
SEED_IMAGE_INSTRUCTION = (
    "The input is an image which may contain concepts from the list {names}. Examine it and then "
    "output just the word 'Yes' if the image contains {concept}, otherwise 'No' after 'FINAL ANSWER:'. "
    "If unsure of the answer, try to choose the best option."
)
PROTOCOLS = ("margin", "seed")
_FINAL = re.compile(r"\*{0,2}\s*final\s+answer\s*\*{0,2}\s*:\s*\*{0,2}", re.IGNORECASE)


@dataclass
class PromptConfig:
    """Which model to prompt and how."""

    model: str = ""
    protocol: Literal["margin", "seed"] = "margin"
    chat: str = "auto"  # auto: the chat template when the tokenizer has one | always | never
    text_template: str = TEXT_TEMPLATE
    chat_template: str = CHAT_TEXT_TEMPLATE
    image_template: str = IMAGE_TEMPLATE
    yes: str = " yes"
    no: str = " no"
    max_new_tokens: int = 16  # seed protocol: the answer is "FINAL ANSWER: Yes" or a short sentence
    batch_size: int = 8
    max_length: int = 1024
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"prompt protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.chat not in ("auto", "always", "never"):
            raise ValueError(f"prompt chat must be auto, always or never, got {self.chat!r}")

    def key(self, extra: object) -> str:
        d = {k: v for k, v in asdict(self).items() if k not in ("batch_size", "device")}
        return stable_hash([d, extra])


def concept_phrase(name: str) -> str:
    """Readable phrase for a concept column: ``color::black-c`` -> ``black (color)``."""
    group, _, base = name.rpartition("::")
    base = base.removesuffix("-c").replace("_", " ").replace("-", " ").strip()
    return f"{base} ({group.replace('_', ' ')})" if group else base


def seed_concept_name(name: str) -> str:
    """The concept as the seed's prompt names it: the column name without a ``group::`` prefix."""
    return name.rpartition("::")[2]


def seed_instruction(concepts: Sequence[str], concept: str, image: bool = False) -> str:
    """The seed's instruction for one concept (the list is printed as Python prints a list)."""
    names = [seed_concept_name(c) for c in concepts]
    tmpl = SEED_IMAGE_INSTRUCTION if image else SEED_TEXT_INSTRUCTION
    return tmpl.format(names=names, concept=seed_concept_name(concept))


def parse_seed_answer(output: str) -> int:
    """1 iff the answer after the last ``FINAL ANSWER:`` marker (or the whole output) contains ``Yes``."""
    found = list(_FINAL.finditer(output))
    answer = output[found[-1].end():] if found else output
    return int("Yes" in answer.strip())


def _first_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the tokenizer maps {word!r} to no token")
    return int(ids[0])


def _common_prefix(rows: list[list[int]]) -> int:
    """Length of the longest common prefix of token-id lists (at least one token left per row)."""
    shortest = min(len(r) for r in rows)
    if shortest <= 1:
        return 0
    mat = np.array([r[:shortest] for r in rows])
    same = (mat == mat[0]).all(axis=0)
    n = int(np.argmin(same)) if not same.all() else shortest
    return min(n, shortest - 1)


class TextPrompter:
    """A causal LM answering yes/no questions about texts (raw prompt or its chat template)."""

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
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if cfg.chat == "always" and not has_template:
            raise ValueError(f"{cfg.model}: prompt chat 'always' but the tokenizer has no chat template")
        self.chat = cfg.chat == "always" or (cfg.chat == "auto" and has_template)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(cfg.dtype, self.device))
        self.model.to(self.device).eval()
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        yes, no = (cfg.yes.strip().capitalize(), cfg.no.strip().capitalize()) if self.chat else (cfg.yes, cfg.no)
        self.yes, self.no = _first_token(self.tokenizer, yes), _first_token(self.tokenizer, no)

    # ---- prompts
    def _render(self, user: str, raw: str) -> str:
        if not self.chat:
            return raw
        msg = [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(msg, add_generation_prompt=True, tokenize=False)

    def margin_prompt(self, text: str, concept: str) -> str:
        """The full prompt string of the margin protocol for one (text, concept)."""
        phrase = concept_phrase(concept)
        return self._render(self.cfg.chat_template.format(text=text, concept=phrase),
                            self.cfg.text_template.format(text=text, concept=phrase))

    def seed_prompt(self, text: str, concept: str, concepts: Sequence[str]) -> str:
        """The seed's prompt: its instruction, then the text (content parts joined by newlines)."""
        user = seed_instruction(concepts, concept) + "\n" + text
        return self._render(user, user + "\nFINAL ANSWER:")

    def _ids(self, prompt: str) -> list[int]:
        # a chat template writes its own BOS; a raw prompt gets the tokenizer's special tokens
        return self.tokenizer(prompt, add_special_tokens=not self.chat)["input_ids"]

    # ---- margin protocol
    @torch.inference_mode()
    def score_one(self, text: str, concepts: Sequence[str]) -> np.ndarray:
        """``logit(yes) - logit(no)`` ``[C]`` for one text: the shared prefix is run once."""
        rows = [self._ids(self.margin_prompt(text, c)) for c in concepts]
        limit = self.cfg.max_length
        p = _common_prefix(rows)
        suffixes = [r[p:] for r in rows]
        s_max = max(len(s) for s in suffixes)
        prefix = rows[0][:p][-max(limit - s_max, 0):] if p else []  # too long: keep the text's end
        p = len(prefix)
        n = len(rows)
        ids = torch.full((n, s_max), int(self.tokenizer.pad_token_id), dtype=torch.long)
        for i, s in enumerate(suffixes):
            ids[i, : len(s)] = torch.tensor(s)
        lengths = torch.tensor([len(s) for s in suffixes])
        mask = torch.cat([torch.ones(n, p, dtype=torch.long),
                          (torch.arange(s_max)[None] < lengths[:, None]).long()], dim=1)
        kwargs: dict = {}
        if p:
            out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values  # renamed in transformers 5.x
            cache.batch_repeat_interleave(n)
            kwargs[self._cache_arg] = cache
        pos = (p + torch.arange(s_max))[None].expand(n, -1)
        last = torch.unique(lengths - 1)  # only these suffix positions go through the LM head
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=pos.to(self.device), use_cache=bool(p), logits_to_keep=last.to(self.device),
                            **kwargs).logits.float()
        at = torch.searchsorted(last, lengths - 1)
        row = logits[torch.arange(n), at.to(logits.device)]
        return (row[:, self.yes] - row[:, self.no]).cpu().numpy()

    def score(self, texts: Sequence[str], concepts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Margin scores ``[len(texts), len(concepts)]``; one question per (text, concept)."""
        out = np.empty((len(texts), len(concepts)), dtype=np.float32)
        for i, t in enumerate(tqdm(texts, desc="prompt", disable=not progress)):
            out[i] = self.score_one(t, concepts)
        return out

    # ---- seed protocol
    @torch.inference_mode()
    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy answers (``max_new_tokens``) to prompts, batched with left padding."""
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.cfg.max_length,
                             add_special_tokens=not self.chat, return_tensors="pt").to(self.device)
        out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def answer(self, texts: Sequence[str], concepts: Sequence[str],
               progress: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """Seed protocol: 0/1 answers ``[len(texts), len(concepts)]`` and the generated strings."""
        prompts = [self.seed_prompt(t, c, concepts) for t in texts for c in concepts]
        answers: list[str] = []
        bs = self.cfg.batch_size
        for i in tqdm(range(0, len(prompts), bs), desc="prompt (seed)", disable=not progress):
            answers += self.generate(prompts[i:i + bs])
        dec = np.array([parse_seed_answer(a) for a in answers], dtype=np.float32)
        c = len(concepts)
        return dec.reshape(len(texts), c), [answers[i:i + c] for i in range(0, len(answers), c)]


class ImageTokenProcessor:
    """Tokenizer + image processor for a Qwen2-VL-style model, for when its processor cannot be built.

    transformers builds a ``Qwen2_5_VLProcessor`` only with torchvision installed (it carries a
    video processor), and the CUDA torchvision wheels do not load beside a CPU torch. The images
    part needs none of it: the image processor gives ``pixel_values`` and ``image_grid_thw``, and
    each image token of the prompt becomes ``prod(grid_thw) / merge_size**2`` copies, as the
    processor's own ``replace_image_token`` does.
    """

    def __init__(self, tokenizer, image_processor, image_token: str = "<|image_pad|>"):
        self.tokenizer, self.image_processor, self.image_token = tokenizer, image_processor, image_token
        if tokenizer.convert_tokens_to_ids(image_token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {image_token!r} token")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def __call__(self, images, text: str, add_special_tokens: bool = False, return_tensors: str = "pt"):
        from transformers import BatchFeature

        pix = self.image_processor(images=[images], return_tensors=return_tensors)
        n = int(pix["image_grid_thw"][0].prod()) // self.image_processor.merge_size ** 2
        if text.count(self.image_token) != 1:
            raise ValueError(f"the prompt must hold one {self.image_token!r}, got {text.count(self.image_token)}")
        enc = self.tokenizer(text.replace(self.image_token, self.image_token * n),
                             add_special_tokens=add_special_tokens, return_tensors=return_tensors)
        return BatchFeature({**enc, **pix})


def load_image_processor(path: str | Path):
    """The model's processor, or :class:`ImageTokenProcessor` for Qwen2-VL-style models without torchvision."""
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.utils import is_torchvision_available

    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type in ("qwen2_vl", "qwen2_5_vl") and not is_torchvision_available():
        return ImageTokenProcessor(AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path))
    return AutoProcessor.from_pretrained(path)


class ImagePrompter:
    """An image-text-to-text model (Mllama, Qwen2.5-VL, ...) answering yes/no questions about images."""

    def __init__(self, cfg: PromptConfig):
        from transformers import AutoModelForImageTextToText

        self.cfg = cfg
        path = resolve_model_path(cfg.model)
        self.device = pick_device(cfg.device)
        self.processor = load_image_processor(path)
        self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=pick_dtype(cfg.dtype, self.device))
        self.model.to(self.device).eval()
        tok = self.processor.tokenizer
        self.yes, self.no = _first_token(tok, cfg.yes.strip().capitalize()), _first_token(tok, cfg.no.strip().capitalize())

    def messages(self, concept: str, concepts: Sequence[str]) -> list[dict]:
        """The chat messages for one concept: our question, or the seed's (image first) for ``seed``."""
        if self.cfg.protocol == "seed":
            content = [{"type": "text", "text": "\n"}, {"type": "image"},
                       {"type": "text", "text": seed_instruction(concepts, concept, image=True)}]
        else:
            content = [{"type": "image"},
                       {"type": "text", "text": self.cfg.image_template.format(concept=concept_phrase(concept))}]
        return [{"role": "user", "content": content}]

    def _inputs(self, img, concept: str, concepts: Sequence[str]):
        text = self.processor.apply_chat_template(self.messages(concept, concepts), add_generation_prompt=True)
        return self.processor(images=img, text=text, add_special_tokens=False, return_tensors="pt").to(self.device)

    @torch.inference_mode()
    def score(self, images: Sequence, concepts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Margin scores ``[len(images), len(concepts)]``: ``logit(Yes) - logit(No)`` after the question."""
        out = np.empty((len(images), len(concepts)), dtype=np.float32)
        for i, img in enumerate(tqdm(images, desc="prompt", disable=not progress)):
            for j, c in enumerate(concepts):
                logits = self.model(**self._inputs(img, c, concepts)).logits[0, -1].float()
                out[i, j] = float(logits[self.yes] - logits[self.no])
        return out

    @torch.inference_mode()
    def answer(self, images: Sequence, concepts: Sequence[str],
               progress: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """Seed protocol on images: greedy answers, 0/1 by :func:`parse_seed_answer`."""
        dec = np.empty((len(images), len(concepts)), dtype=np.float32)
        texts: list[list[str]] = []
        tok = self.processor.tokenizer
        for i, img in enumerate(tqdm(images, desc="prompt (seed)", disable=not progress)):
            row = []
            for j, c in enumerate(concepts):
                enc = self._inputs(img, c, concepts)
                gen = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=False)
                row.append(tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
                dec[i, j] = parse_seed_answer(row[-1])
            texts.append(row)
        return dec, texts


def asked_samples(splits: np.ndarray, protocol: str) -> np.ndarray:
    """Which samples a protocol asks about: ``cal`` + ``test`` (margin) or ``test`` (seed)."""
    wanted = ("cal", "test") if protocol == "margin" else ("test",)
    return np.flatnonzero(np.isin(splits, wanted))


def prompt_scores(ds: Dataset, cfg: PromptConfig, cache_dir: Path, progress: bool = True) -> np.ndarray:
    """Prompting scores ``[N, C]`` (NaN for samples the protocol does not ask), cached under ``cache_dir``.

    The seed protocol also writes the generated answers beside the scores (``*_answers.csv``).
    """
    ids = asked_samples(ds.splits, cfg.protocol)
    path = Path(cache_dir) / f"prompt_{cfg.key([ds.name, ds.concepts, len(ds), ids.tolist()])}.npy"
    if path.exists():
        return np.load(path)
    scores = np.full((len(ds), len(ds.concepts)), np.nan, dtype=np.float32)
    answers = None
    if ds.modality == "text":
        prompter = TextPrompter(cfg)
        texts = ds.texts(ids)
    else:
        from PIL import Image

        prompter = ImagePrompter(cfg)
        texts = [Image.open(ds.image_path(int(i))).convert("RGB") for i in ids]
    if cfg.protocol == "seed":
        scores[ids], answers = prompter.answer(texts, ds.concepts, progress)
    else:
        scores[ids] = prompter.score(texts, ds.concepts, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    if answers is not None:
        table = pd.DataFrame(answers, columns=ds.concepts)
        table.insert(0, "sample", ids)
        atomic_write_bytes(path.with_name(path.stem + "_answers.csv"), table.to_csv(index=False).encode())
    atomic_save_npy(path, scores)
    return scores
