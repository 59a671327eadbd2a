"""The one YAML reader: safe, and a key written twice in one mapping is an error, not "the last wins".

Why: PyYAML keeps the last of two ``embed:`` (or ``layers:``) keys without a word, so a config
with a pasted-in second section ran silently with half of what its author wrote. Used for run
configs, the ``config.yaml`` saved in run folders and ``--set`` values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ValidationError
from .files import regular_file_problem


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int):
        self.key, self.line, self.first = key, line, first
        super().__init__(f"key {key!r} written twice (line {first} and line {line}); keep one")


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` whose mappings refuse a repeated key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<' merges are PyYAML's own, not a repeated key
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys itself
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """The YAML document in ``text``; invalid YAML or a repeated key is a one-line
    :class:`ValidationError` starting with ``where`` (a file name, or ``--set KEY``)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except _DuplicateKey as err:
        raise ValidationError([f"{where}: {err}"]) from None
    except yaml.YAMLError as err:
        raise ValidationError([f"{where}: invalid YAML: {' '.join(str(err).split())}"]) from None
    except RecursionError:
        raise ValidationError([f"{where}: invalid YAML: nested too deeply"]) from None


def load_yaml_file(path: str | Path, allow_empty: bool = False) -> Any:
    """The YAML document of the file at ``path`` (see :func:`load_yaml`).

    A file that is empty or only comments is an error unless ``allow_empty`` (then None):
    an empty config used to run the whole default pipeline; a 0-byte saved ``config.yaml`` is
    a damaged run folder. Not UTF-8, or not a regular file (a FIFO would block), is an error too.
    """
    path = Path(path)
    why = regular_file_problem(path)
    if why:
        if why == "not found":
            raise FileNotFoundError(f"{path}: file not found")
        raise ValidationError([f"{path} {why}"])
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValidationError([f"{path}: not UTF-8 text (byte {err.start})"]) from None
    data = load_yaml(text, str(path))
    if data is None and not allow_empty:
        raise ValidationError([f"{path}: empty (no settings); write at least one key, e.g. 'data: {{path: ...}}'"])
    return data
