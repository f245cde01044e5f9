"""The chaos tier's two modes: kill -9 at chosen and random moments, and random inputs into every reader.

Fast by default (part of `make test`); `make chaos` sets TUNESMITH_CHAOS=1 for the long mode: many more kill points
and hypothesis examples. Imported by the chaos tests (a conftest.py here would shadow tests/conftest.py).
"""

from __future__ import annotations

import os

from hypothesis import settings

CHAOS = os.environ.get("TUNESMITH_CHAOS") == "1"

settings.register_profile("default", max_examples=12, deadline=None, database=None)
settings.register_profile("chaos", max_examples=400, deadline=None)
settings.load_profile("chaos" if CHAOS else "default")
