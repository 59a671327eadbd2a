"""Errors that carry every problem found, one line each, for the CLI to print without a traceback."""

from __future__ import annotations


class ValidationError(ValueError):
    """A config, dataset or model check failed; ``problems`` holds one line per problem.

    Why a list: a user fixing a config should see every bad key at once, not one per run.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = problems.splitlines() if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

