"""Reading a run directory's files in tests (shared by the budget, threads and regularisation tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def start_row(run: Path) -> dict[str, Any]:
    """The last ``start`` row of ``run``'s metrics.jsonl (a resumed run writes one per start)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "start"][-1]
