"""The top-level package exposes the public API, lazily."""

import subprocess
import sys

import superactivators


def test_public_names_resolve():
    for name in superactivators.__all__:
        assert getattr(superactivators, name) is not None, name
    from superactivators import ConceptDetector, load_config, run_pipeline  # noqa: F401


def test_import_is_light():
    code = "import sys, superactivators; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
