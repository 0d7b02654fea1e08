"""Benchmark harness of the capital-tracking migration (`make bench`, `python -m bench.run`); see BENCHMARKS.md.

The project's collection lives in python/ (ansible.cfg's collections_path), not in the venv: put it on
sys.path here so `bench.run` can import the migration runner the capital_migrate module uses.
"""

import sys
from pathlib import Path

_PYTHON = str(Path(__file__).resolve().parents[1] / "python")
if _PYTHON not in sys.path:
    sys.path.insert(0, _PYTHON)
