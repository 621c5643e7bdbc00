"""Where the tests find the repository and their helpers."""

from pathlib import Path

#: the tests' helper modules (on ``sys.path`` in the tests, and on ``PYTHONPATH`` for Ray workers)
HELPERS = Path(__file__).resolve().parent
#: the repository root
ROOT = HELPERS.parents[1]
