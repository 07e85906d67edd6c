"""The field tables of docs/checkpoint-format.md, generated from the record classes.

``python -m charnn.record_docs`` rewrites every block between ``<!-- record: NAME -->`` and
``<!-- /record -->``; a test checks that the doc is up to date and has a block for every record,
so a field added to a record cannot be missing from the documentation.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from charnn.checkpoint_meta import CheckpointMeta, CorpusRecord, Counters, Lineage, OptimizerRecord, RunRecord
from charnn.jsonrecord import JsonRecord, json_fields
from charnn.metrics_rows import EndRow, ProgressRow, RegularisationRecord, StartRow, StopRow, ValRow
from charnn.results import EvalRow, InfoRow, RunRow, SampleRow, ScoreRow, TokenizerSummary

DOC = Path(__file__).resolve().parent.parent / "docs" / "checkpoint-format.md"
RECORDS: dict[str, type[JsonRecord]] = {
    cls.__name__: cls
    for cls in (
        CheckpointMeta,
        Counters,
        CorpusRecord,
        OptimizerRecord,
        RunRecord,
        Lineage,
        RegularisationRecord,
        StartRow,
        ProgressRow,
        ValRow,
        StopRow,
        EndRow,
        SampleRow,
        EvalRow,
        ScoreRow,
        RunRow,
        InfoRow,
        TokenizerSummary,
    )
}
_BLOCK = re.compile(r"(<!-- record: (\w+) -->\n)(.*?)(<!-- /record -->)", re.S)
# Written by the writer around the record's own fields.
_HEADER = {
    "CheckpointMeta": [
        ("format", '"charnn-checkpoint"'),
        ("version", "1"),
        ("checksum", "sha256 of the other fields (compact JSON, keys sorted)"),
    ],
}


def record_table(name: str) -> str:
    """Markdown table of a record's JSON fields and what each must hold."""
    cls = RECORDS[name]
    kind = getattr(cls, "KIND", "")
    rows = [("kind", f'"{kind}"')] if kind else []
    fields = json_fields(cls)
    if cls.OMIT_NONE:  # the writer leaves such fields out rather than writing null
        fields = [
            (f, "absent, or " + what.removeprefix("null or ")) if what.startswith("null or") else (f, what)
            for f, what in fields
        ]
    rows += _HEADER.get(name, []) + fields
    lines = ["| field | holds |", "| --- | --- |", *(f"| `{f}` | {what} |" for f, what in rows)]
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` with every record block regenerated."""
    return _BLOCK.sub(lambda m: m.group(1) + record_table(m.group(2)) + m.group(4), text)


def undocumented(text: str) -> list[str]:
    """Records that have no block in ``text``."""
    return sorted(set(RECORDS) - {m.group(2) for m in _BLOCK.finditer(text)})


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DOC
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"{path}: record tables updated", file=sys.stderr)
    missing = undocumented(new)
    if missing:
        print(f"{path}: no table for {', '.join(missing)}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
