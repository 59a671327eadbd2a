"""``python -m superactivators`` (also the entry point for ``torchrun -m superactivators``)."""

import sys

from .cli import main

sys.exit(main())
