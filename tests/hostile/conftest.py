"""The hostile-input suite: each test is an attack that once crashed kiln, hung it, or gave a
silent wrong answer. The shared helpers live in tests/hostile/_hostile.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: _optest and friends
sys.path.insert(0, str(Path(__file__).resolve().parent))
