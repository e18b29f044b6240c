"""One thin entry per DVC stage: `python -m pipelines.<stage>` runs `hdkd.stages.run(<stage>)`.

DVC runs the `python` it finds on PATH. Another interpreter than the project's would fail deep in an
import, with a traceback; importing this package (stdlib only) stops it first, with one line saying what to do.
"""

import importlib.util
import sys
from pathlib import Path

_NEEDED = ("torch", "mlflow", "pydantic", "dvc")

if _missing := [name for name in _NEEDED if importlib.util.find_spec(name) is None]:
    _venv = Path(".venv/bin/activate")
    _fix = f"activate it first (source {_venv})" if _venv.is_file() else "install it first (make setup)"
    print(
        f"error: this stage runs {sys.executable}, which lacks the project's packages ({', '.join(_missing)}): "
        f"not the project's environment; {_fix}, then run the command again",
        file=sys.stderr,
    )
    raise SystemExit(1)
