"""bench/http.py shadows the standard library's ``http`` package for every script run from
bench/ (Python puts a script's directory first on ``sys.path``), and httpx, Celery and
prometheus-client import ``http.client``. Imported first by those scripts: it loads the
standard library's package with bench/ off the path, so later imports find it loaded."""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_saved = sys.path[:]
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
sys.modules.pop("http", None)
import http.client  # noqa: E402,F401 - the standard library's, on purpose

sys.path[:] = _saved
