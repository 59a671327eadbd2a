"""The package layout follows the data: no import cycles, and no stage imports a later one."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "superactivators"

# data flows left to right; a module may import its own rank or lower ranks only
RANKS = {
    "util": 0, "data": 1, "encoders": 2, "store": 3, "concepts": 4, "evaluate": 5,
    "localize": 6, "prompting": 6, "stats": 6, "report": 7,
    "config": 8, "preflight": 9, "pipeline": 9, "detector": 9, "demo": 10, "benchmark": 10, "benchmark_regimes": 10,
    "cli": 11,
    "__init__": 12, "__main__": 12,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every ``superactivators`` module that ``path`` imports, at any depth of the file."""
    name = module_name(path)
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("superactivators"):
                continue
            for alias in node.names:  # "from . import figures" names a module
                sub = f"{mod}.{alias.name}"
                found.add(sub if _exists(sub) else mod)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("superactivators")}
    found.discard(name)
    return found


def _exists(mod: str) -> bool:
    p = PKG.parent.joinpath(*mod.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def rank(mod: str) -> int:
    parts = mod.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return RANKS[key]


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def test_every_subpackage_has_a_rank():
    for p in PKG.iterdir():
        if p.name.startswith((".", "_")) and p.name not in ("__init__.py", "__main__.py"):
            continue
        if p.is_dir() and (p / "__init__.py").exists() or p.suffix == ".py":
            assert p.stem in RANKS, f"{p.name} has no place in the layer order"


def test_no_stage_imports_a_later_one():
    bad = [f"{m} -> {t}" for m, ts in graph().items() for t in ts if rank(t) > rank(m)]
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def find_cycles(g: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if t not in g:
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles():
    cycles = find_cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_planted_cycle(tmp_path, monkeypatch):
    pkg = tmp_path / "superactivators"
    (pkg / "util").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "util" / "__init__.py").write_text("")
    (pkg / "util" / "a.py").write_text("from .b import x\n")
    (pkg / "util" / "b.py").write_text("def f():\n    from .a import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    g = graph()
    assert g["superactivators.util.a"] == {"superactivators.util.b"}
    assert g["superactivators.util.b"] == {"superactivators.util.a"}
    assert find_cycles(g) == [["superactivators.util.a", "superactivators.util.b", "superactivators.util.a"]]
    (pkg / "util" / "c.py").write_text("from ..pipeline import run\n")
    (pkg / "pipeline.py").write_text("")
    assert imports_of(pkg / "util" / "c.py") == {"superactivators.pipeline"}
    assert rank("superactivators.pipeline") > rank("superactivators.util.c")


def test_config_imports_without_torch():
    """``import superactivators.config`` reads a config without loading torch (the CLI's help stays quick)."""
    import subprocess

    code = "import sys, superactivators.config as c; c.config_from_dict({}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
