"""GPU check of the model families at full architecture size (random weights, no download).

For Gemma-2-9B, Qwen3-Embedding-4B and Llama-3.2-11B-Vision's vision tower, built from their
reference configs (:data:`superactivators.encoders.registry.REFERENCE_MODELS`) in bf16 on the GPU:

- hooks vs ``output_hidden_states``: the states of the seed sweep are bitwise equal;
- per batch: wall time and peak activation memory (peak allocated minus the weights) for
  ``output_hidden_states=True`` (every layer held), hooks on the seed sweep (forward to the
  end), and hooks stopping after a shallow layer (39 % through the model).

Usage: ``python benchmarks/models_gpu.py [OUT.json] [--tiny]``; ``--tiny`` shrinks every width
(layer counts kept) and runs on the CPU, a dry run of the script itself.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import replace

import torch

from superactivators.encoders.capture import LayerTap
from superactivators.encoders.registry import REFERENCE_MODELS, get_family

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CUDA = DEV == "cuda"


def shrink(ref):
    """The reference model with tiny widths and its real layer counts (CPU dry run)."""
    small = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 1000, "vision_output_dim": 32 * 6,
             "image_size": 56}
    cfg = copy.deepcopy(ref.config)
    for d in [cfg, *(v for v in cfg.values() if isinstance(v, dict))]:
        for k in list(d):
            if k in small:
                d[k] = small[k]
    return replace(ref, config=cfg)


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _peak(fn, reps: int = 3) -> tuple[float, float, object]:
    """(median seconds, peak extra GiB, last result) of ``fn()`` on the GPU."""
    _sync()
    base = torch.cuda.memory_allocated() if CUDA else 0
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    out, times = None, []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        _sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if CUDA else float("nan")
    return sorted(times)[len(times) // 2], peak, out


def build(ref, family):
    import transformers

    cfg = ref.build_config()
    sub = family.sub_config(cfg)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(DEV):
            if family.name == "mllama-vision":
                model = transformers.MllamaVisionModel(sub)
            else:
                extra = {"attn_implementation": family.attn_implementation} if family.attn_implementation else {}
                model = transformers.AutoModel.from_config(sub, **extra)
    finally:
        torch.set_default_dtype(old)
    return model.eval(), sub


@torch.inference_mode()
def bench_text(ref, batch: int = 16, length: int = 256) -> dict:
    fam = get_family(ref.family)
    model, sub = build(ref, fam)
    n = fam.n_layers(sub)
    sweep = fam.sweep_layers(sub)
    shallow = [l for l in sweep if l <= round(0.39 * n)]
    ids = torch.randint(10, 1000, (batch, length), device=DEV)
    mask = torch.ones_like(ids)
    blocks = fam.blocks(model, sub)
    kw = {"input_ids": ids, "attention_mask": mask, "use_cache": False}

    def full():
        hs = model(**kw, output_hidden_states=True).hidden_states
        return {l: hs[l] for l in sweep}

    def hooks(layers):
        def run():
            need = n in layers
            cap = LayerTap(blocks, layers, need_output=need).run(lambda: model(**kw))
            if need:
                cap.states[n] = cap.output.last_hidden_state
            return cap.states
        return run

    full()  # warm-up
    t_full, m_full, ref_states = _peak(full)
    t_sweep, m_sweep, got = _peak(hooks(sweep))
    t_shallow, m_shallow, _ = _peak(hooks(shallow))
    equal = all(torch.equal(got[l], ref_states[l]) for l in sweep)
    weights = sum(p.numel() for p in model.parameters()) * 2 / 2**30
    return {"model": ref.hub_id, "family": fam.name, "n_layers": n, "sweep": sweep, "shallow": shallow,
            "batch": f"{batch} x {length} tokens", "weights_gib": round(weights, 2), "hooks_equal_hidden_states": equal,
            "output_hidden_states": {"s": round(t_full, 4), "peak_gib": round(m_full, 3)},
            "hooks_sweep": {"s": round(t_sweep, 4), "peak_gib": round(m_sweep, 3)},
            "hooks_shallow_stop": {"s": round(t_shallow, 4), "peak_gib": round(m_shallow, 3)}}


@torch.inference_mode()
def bench_mllama_vision(ref, batch: int = 8) -> dict:
    from superactivators.encoders.mllama import split_tile_tokens, tile_geometry, tiles_to_canvas

    fam = get_family("mllama-vision")
    model, sub = build(ref, fam)
    n = fam.n_layers(sub)
    sweep = fam.sweep_layers(sub)
    blocks = fam.blocks(model, sub)
    T = sub.max_num_tiles
    px = torch.randn(batch, 1, T, 3, sub.image_size, sub.image_size, device=DEV, dtype=torch.bfloat16)
    ar_ids = torch.full((batch, 1), 6, device=DEV)  # (2, 2): four real tiles
    ar_mask = torch.ones(batch, 1, T, dtype=torch.long, device=DEV)
    kw = {"pixel_values": px, "aspect_ratio_ids": ar_ids, "aspect_ratio_mask": ar_mask}
    shallow = [l for l in sweep if l <= round(0.39 * n)]

    def hooks(layers):
        return lambda: LayerTap(blocks, layers).run(lambda: model(**kw)).states

    hooks(sweep)()  # warm-up
    t_all, m_all, all_states = _peak(hooks(list(range(1, n + 1))))
    t_sweep, m_sweep, got = _peak(hooks(sweep))
    t_shallow, m_shallow, _ = _peak(hooks(shallow))
    # the model's own output: [global block 8 | local blocks 4, 8, 16, 24, 31 interleaved]
    out = model(**kw).last_hidden_state
    d = sub.hidden_size
    geo = tile_geometry(2 * sub.image_size, 2 * sub.image_size, sub.image_size, T, sub.patch_size)
    _, patches = split_tile_tokens(got[n], T, sub.image_size // sub.patch_size)
    mine = tiles_to_canvas(patches[0], geo)
    theirs = tiles_to_canvas(out[0, 0, :, 1:, :d], geo)
    equal_last = bool(torch.equal(mine, theirs))
    equal_sweep = all(torch.equal(got[l], all_states[l]) for l in sweep)
    weights = sum(p.numel() for p in model.parameters()) * 2 / 2**30
    photo = tile_geometry(480, 640)
    return {"model": ref.hub_id, "family": fam.name, "n_layers": n, "sweep": sweep, "shallow": shallow,
            "batch": f"{batch} images x 4 tiles", "weights_gib": round(weights, 2),
            "last_layer_equals_model_output": equal_last, "sweep_equal_all_layer_hooks": equal_sweep,
            "tokens_per_4_tile_image": geo.n_patches, "photo_640x480": {"tiles": [photo.tiles_h, photo.tiles_w],
                                                                          "stored": photo.n_patches, "valid": int(photo.valid().sum())},
            "hooks_all_layers": {"s": round(t_all, 4), "peak_gib": round(m_all, 3)},
            "hooks_sweep": {"s": round(t_sweep, 4), "peak_gib": round(m_sweep, 3)},
            "hooks_shallow_stop": {"s": round(t_shallow, 4), "peak_gib": round(m_shallow, 3)}}


def main() -> None:
    import transformers

    tiny = "--tiny" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--tiny"]
    res = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
           "transformers": transformers.__version__, "tiny": tiny, "runs": []}
    refs = {(r.hub_id, r.family): (shrink(r) if tiny else r) for r in REFERENCE_MODELS}
    for key in (("Qwen/Qwen3-Embedding-4B", "qwen3"), ("google/gemma-2-9b", "gemma2")):
        res["runs"].append(bench_text(refs[key], *((2, 16) if tiny else ())))
        if CUDA:
            torch.cuda.empty_cache()  # the model went out of scope with the call
        print(json.dumps(res["runs"][-1]), flush=True)
    res["runs"].append(bench_mllama_vision(refs[("meta-llama/Llama-3.2-11B-Vision-Instruct", "mllama-vision")],
                                           *((1,) if tiny else ())))
    print(json.dumps(res["runs"][-1]), flush=True)
    if args:
        with open(args[0], "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
