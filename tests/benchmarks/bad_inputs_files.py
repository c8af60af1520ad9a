"""Bad inputs of one class: files a suite points at: checkpoints, image folders, planted indexes."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bad_input_kit import Case  # noqa: E402

CASES: list[Case] = []
