"""The fuzz tests (tests/unit/test_fuzz.py) again, with ten times the examples: 4,000 per property."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_fuzz_properties_with_4000_examples_each() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_fuzz.py"],
        cwd=ROOT,
        env={**os.environ, "FLOWYARD_FUZZ_EXAMPLES": "4000"},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    print(done.stdout[-2000:])
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
