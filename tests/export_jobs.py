"""`python -m tests.export_jobs JOBS`: run `clif-serve export` jobs one after another in this process.

JOBS is a JSON list of argument lists (`["export", ...]`). The test session starts it
once, in the background, for the exports it shares (tests/conftest.py `BackgroundExports`); one
process pays the import and first-trace warm-up once for all of them.
"""

from __future__ import annotations

import json
import sys

from clif_serve.cli import main
from clif_serve.serving.launcher import _stop_with_parent

if __name__ == "__main__":
    _stop_with_parent()  # SIGTERM when the test session is gone (killed before it could stop us)
    for args in json.loads(sys.argv[1]):
        if main(args) != 0:
            sys.exit(f"clif-serve {' '.join(args)} failed")
