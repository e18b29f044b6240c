"""Shared front door of the stage entries: bad input ends with one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from hdkd.errors import HDKDError


def run_stage(stage: Callable[[], Any]) -> None:
    try:
        stage()
    except HDKDError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
