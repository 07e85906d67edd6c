"""Typed records at the seams: meta.json, metrics.jsonl rows, command result rows.

The contract: each record has one writer and one validating reader. A forged meta.json (any field
of any kind, re-checksummed) is a bad checkpoint (exit 3, one line) for every command that reads
it, never a crash and never output before the error; ``charnn runs`` skips such a run with a
warning. Old checkpoints and metrics files still load, and what is written is byte-identical to
what charnn wrote before the records existed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charnn import checkpoint as ck
from charnn.checkpoint_meta import CheckpointMeta, encode_meta, parse_meta
from charnn.data import BinaryData
from charnn.errors import VocabularyError
from charnn.metrics import METRICS, MetricsLog, read_metrics
from charnn.metrics_rows import ROWS, EndRow, ProgressRow, StartRow, ValRow, parse_row
from charnn.record_docs import DOC, render, undocumented
from charnn.results import SampleRow, ScoreRow

NAN = float("nan")

# (where in meta.json, forged value): several forgeries per kind of field. Each has a valid checksum.
FORGERIES: list[tuple[tuple[str, ...], Any]] = [
    # mappings / nested records
    (("corpus",), 5),  # the case: info exited 1 silently, sample crashed after printing
    (("corpus",), []),
    (("corpus",), "text"),
    (("progress",), []),
    (("parent",), 7),
    (("run",), ["charnn"]),
    (("optimizer",), "adamw"),
    # lists
    (("corpus", "sources"), "corpus.txt"),
    (("corpus", "sources"), [1, 2]),
    (("run", "argv"), {"0": "charnn"}),
    (("optimizer", "param_groups"), []),
    (("optimizer", "param_groups"), [{"lr": {"nested": 1}}]),
    # whole numbers
    (("progress", "step"), "abc"),
    (("progress", "step"), -1),
    (("progress", "step"), 1.5),
    (("progress", "tokens"), True),
    (("world_size",), 0),
    (("world_size",), "2"),
    (("parent", "step"), None),
    (("corpus", "chars"), -3),
    # finite numbers
    (("progress", "elapsed"), -5),
    (("progress", "elapsed"), NAN),  # json writes NaN, and Python's json reads it back
    (("progress", "lr_scale"), 0),
    (("progress", "best_val_bpc"), "low"),
    (("progress", "val"), {"bpc": "x"}),
    (("progress", "val"), [1.0]),
    # text and digests
    (("created",), 20261204),
    (("charnn_version",), ["0.1.0"]),
    (("progress", "stopped_reason"), 3),
    (("run", "device"), {"type": "cpu"}),
    (("corpus", "sha256"), "not a digest"),
    (("corpus", "sha256"), 5),
    (("files", ck.MODEL_FILE), 12),
    # configs and tokenizer
    (("train",), "fast"),
    (("train", "batch_size"), 0),
    (("train", "seed"), "x"),
    (("model", "hidden"), "8"),
    (("tokenizer",), None),
    # regularisation and averaging (issue 17 §4)
    (("model", "weight_drop"), 1.0),
    (("train", "average"), "mean"),
    (("progress", "best_averaged"), "yes"),
    (("progress", "average_updates"), -2),
    (("run", "regularisation"), {"reason": 5}),
]
IDS = [f"{'.'.join(where)}={value!r}"[:40] for where, value in FORGERIES]


def forge(checkpoint: Path, where: tuple[str, ...], value: Any) -> None:
    """Set one metadata field of ``checkpoint`` and re-checksum it, as a foreign tool could."""
    meta_file = checkpoint / ck.META
    meta = json.loads(meta_file.read_text())
    if where[0] == "parent" and "parent" not in meta:
        meta["parent"] = {
            "path": "/p",
            "step": 1,
            "model_sha256": None,
            "corpus_sha256": None,
            "vocab_size": 9,
        }
    node = meta
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    meta["checksum"] = ck._meta_checksum(meta)
    meta_file.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def forged_runs(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One copy of the trained run per forgery, with both of its checkpoints forged."""
    root = tmp_path_factory.mktemp("forged")
    runs = {}
    for name, (where, value) in zip(IDS, FORGERIES, strict=True):
        run = root / f"run{len(runs)}"
        shutil.copytree(trained_run, run)
        for which in (ck.LATEST, ck.BEST):
            forge(run / which, where, value)
        runs[name] = run
    return runs


@pytest.mark.parametrize("name", IDS)
def test_forged_metadata_is_a_bad_checkpoint_for_every_reader(name: str, forged_runs, cli_inprocess) -> None:
    run = forged_runs[name]
    field = name.split("=")[0].split(".")[0]
    with pytest.raises(ck.CheckpointError, match="meta.json") as caught:
        ck.load_checkpoint(run)
    assert field in str(caught.value) or "config" in str(caught.value) or "tokenizer" in str(caught.value)
    with pytest.raises(ck.CheckpointError):
        ck.load_meta(run)  # the no-weights mode (runs, info) validates just as much
    for args in (("info", "-c", run), ("info", "--json", "-c", run), ("sample", "-c", run, "--length", "5")):
        proc = cli_inprocess(*args)
        assert proc.returncode == 3, (args, proc.stderr)
        assert proc.stdout == ""  # nothing printed before the error (sample once printed its text)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("charnn: error: ")]
        assert len(errors) == 1 and "internal error" not in errors[0] and "Traceback" not in proc.stderr


def test_forged_metadata_is_refused_by_eval_and_resume_and_skipped_by_runs(
    forged_runs, corpus_file: Path, cli_inprocess
) -> None:
    run = forged_runs[IDS[0]]  # "corpus": 5
    for args in (("eval", "-c", run, corpus_file), ("train", "--resume", run, "--steps", "40")):
        proc = cli_inprocess(*args)
        assert proc.returncode == 3 and "corpus is 5, not a mapping" in proc.stderr, (args, proc.stderr)
    listed = cli_inprocess("runs", run.parent, "--json")
    assert listed.returncode == 0 and listed.stdout == "", listed.stdout  # every run there is forged
    assert f"{run}: skipped" in listed.stderr and "internal error" not in listed.stderr


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
TRAINING_FIELDS = [
    ("charnn_version",),
    ("created",),
    ("corpus",),
    ("corpus", "sources"),
    ("corpus", "sha256"),
    ("corpus", "tokens"),
    ("progress",),
    ("progress", "step"),
    ("progress", "val"),
    ("progress", "patience_best"),
    ("optimizer",),
    ("optimizer", "param_groups"),
    ("world_size",),
    ("run",),
    ("run", "argv"),
    ("train",),
    ("train", "lr"),
    ("unknown_from_a_newer_charnn",),
]


@settings(max_examples=150, deadline=None)
@given(where=st.sampled_from(TRAINING_FIELDS), value=JSON_VALUES)
def test_any_forged_training_field_parses_to_typed_values_or_is_refused(
    trained_run: Path, where, value
) -> None:
    """Whatever JSON a field holds, the reader returns a record whose fields have their declared
    types (so nothing downstream can trip over them), or refuses the metadata."""
    meta = json.loads((trained_run / "latest" / ck.META).read_text())
    node = meta
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    meta["checksum"] = ck._meta_checksum(meta)
    try:
        parsed = parse_meta(json.dumps(meta).encode(), trained_run / "latest")
    except ck.CheckpointError:
        return
    assert isinstance(parsed.created, str | None) and isinstance(parsed.world_size, int | None)
    if parsed.corpus is not None:
        assert all(isinstance(s, str) for s in parsed.corpus.sources) and len(parsed.corpus.sha256) == 64
    if parsed.progress is not None:
        assert isinstance(parsed.progress.step, int) and all(
            v is None or isinstance(v, int | float) for v in parsed.progress.val.values()
        )
    if parsed.run is not None:
        assert all(isinstance(a, str) for a in parsed.run.argv)
    encode_meta(parsed)  # and what was read can be written again


# ---------------------------------------------------------------------------- the format on disk


def test_meta_json_is_written_exactly_as_read(trained_run: Path) -> None:
    """Reading a checkpoint's metadata and writing it again gives the same bytes: the records
    describe the format charnn has always written, no field lost, added or reshaped."""
    for which in (ck.LATEST, ck.BEST):
        raw = (trained_run / which / ck.META).read_bytes()
        meta = parse_meta(raw, trained_run / which)
        assert encode_meta(meta) == raw
        assert meta.progress is not None and meta.corpus is not None and meta.run is not None


# A training checkpoint's meta.json as charnn 0.1.0 wrote it before world_size, parent, the run's
# python/platform, corpus sizes and the early-stopping counters existed. Weights come from a save.
OLD_META = {
    "charnn_version": "0.1.0",
    "created": "2026-06-01T12:00:00Z",
    "corpus": {"sha256": "ab" * 32, "sources": ["corpus.txt"]},
    "format": "charnn-checkpoint",
    "optimizer": {"param_groups": [{"betas": [0.9, 0.99], "eps": 1e-08, "lr": 0.003, "weight_decay": 0.01}]},
    "progress": {
        "best_val_bpc": 2.5,
        "elapsed": 12.5,
        "lr_scale": 1.0,
        "optimizer_steps": 30,
        "skipped_steps": 0,
        "step": 30,
        "train_loss": 1.9,
        "val": {"bpc": 2.5, "loss": 1.7, "step": 30},
    },
    "run": {"argv": ["charnn", "train", "corpus.txt"], "charnn": "0.1.0", "torch": "2.5.0", "device": "cpu"},
    "train": {"batch_size": 4, "lr": 0.005, "seq_len": 16, "seed": 1, "steps": 30},
    "version": 1,
}


def test_a_checkpoint_in_the_old_format_still_loads(tmp_path: Path, cli_inprocess) -> None:
    from charnn.config import ModelConfig
    from charnn.model import CharRNN
    from charnn.tokenizer import CharTokenizer

    tok = CharTokenizer(list("\n abcdefgh"))
    ck.save_checkpoint(
        tmp_path / "ck", CharRNN(ModelConfig(vocab_size=tok.vocab_size, hidden=8, embed=4)), tok
    )
    saved = json.loads((tmp_path / "ck" / ck.META).read_text())
    old = {**OLD_META, **{k: saved[k] for k in ("model", "tokenizer", "files")}}
    old["checksum"] = ck._meta_checksum(old)
    (tmp_path / "ck" / ck.META).write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")
    meta = ck.load_checkpoint(tmp_path / "ck").meta
    assert meta.step == 30 and meta.processes == 1 and meta.parent is None and meta.corpus is not None
    assert meta.corpus.tokens is None and meta.progress is not None and meta.progress.stale_evals == 0
    assert meta.train is not None and meta.train.batch_size == 4
    info = cli_inprocess("info", "--json", "-c", tmp_path / "ck")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["step"] == 30 and json.loads(info.stdout)["corpus"]["sources"] == [
        "corpus.txt"
    ]
    sample = cli_inprocess("sample", "-c", tmp_path / "ck", "--length", "5", "--seed", "1")
    assert sample.returncode == 0 and len(sample.stdout) >= 5


def test_unknown_metadata_keys_from_a_newer_charnn_are_ignored(trained_run: Path) -> None:
    meta = json.loads((trained_run / "best" / ck.META).read_text())
    meta["averaging"] = {"kind": "ema"}
    meta["progress"]["future_counter"] = 3
    meta["checksum"] = ck._meta_checksum(meta)
    parsed = parse_meta(json.dumps(meta).encode(), trained_run / "best")
    assert isinstance(parsed, CheckpointMeta) and parsed.step == meta["progress"]["step"]


# ---------------------------------------------------------------------------- metrics.jsonl


def test_metrics_rows_round_trip_and_tolerate_torn_foreign_and_future_lines(tmp_path: Path) -> None:
    path = tmp_path / METRICS
    log = MetricsLog(path)
    written = [
        StartRow(step=0, argv=["charnn", "train"], charnn="0.1.0", device="cpu", parameters=10, time="t"),
        ProgressRow(step=1, elapsed=0.5, tokens=64, chars=64, loss=4.0, bpc=5.77, lr=1e-4, chars_per_s=100.0),
        ValRow(step=1, elapsed=0.6, tokens=64, chars=64, loss=3.9, bpc=5.6, best_bpc=5.6, is_best=True),
        EndRow(step=1, elapsed=0.7, best_bpc=5.6, time="t"),
    ]
    for row in written:
        log.append(row)
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["start", "progress", "val", "end"]
    assert list(json.loads(lines[1])) == [
        "kind",
        "step",
        "elapsed",
        "tokens",
        "chars",
        "loss",
        "bpc",
        "bpt",
        "lr",
        "chars_per_s",
    ]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"kind": "val", "step": 2, "bpc": 5.0, "new_key": [1]}) + "\n")  # a newer charnn
        fh.write(json.dumps({"kind": "checkpoint", "step": 2}) + "\n")  # a kind this charnn does not know
        fh.write(json.dumps({"kind": "progress", "step": 2, "bpc": "fast"}) + "\n")  # a bad field: skipped
        fh.write('{"kind": "progress", "st')  # torn
    rows = read_metrics(path)
    assert rows[:4] == written
    assert isinstance(rows[4], ValRow) and rows[4].bpc == 5.0 and len(rows) == 5
    MetricsLog(path).rewind(2)  # keeps every whole row up to the step, of any kind, as written
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    assert kinds == ["start", "progress", "val", "end", "val", "checkpoint", "progress"]
    assert json.loads(path.read_text().splitlines()[4])["new_key"] == [1]


def test_metrics_rows_write_nan_as_null_and_read_it_as_missing() -> None:
    from charnn.metrics_rows import to_line

    line = to_line(ProgressRow(step=3, loss=NAN, bpc=float("inf")))
    assert json.loads(line)["loss"] is None and json.loads(line)["bpc"] is None
    row = parse_row(json.loads(line))
    assert isinstance(row, ProgressRow) and row.loss is None and row.bpc is None
    assert set(ROWS) == {"start", "progress", "val", "stop", "end"}


# ---------------------------------------------------------------------------- results, errors, docs


def test_result_rows_keep_their_json_keys() -> None:
    row = SampleRow(sample=0, seed=1, prime="a", text="b", logprob=-1.0, chars=1, stopped_by="length")
    assert list(row.to_json()) == ["sample", "seed", "prime", "text", "logprob", "chars", "stopped_by"]
    prompt = dataclasses.replace(row, line=2, stopped_by="stop")
    assert list(prompt.to_json())[0] == "line" and prompt.to_json()["stopped_by"] == "stop"
    whole = ScoreRow(source="f", text="t", logprob=-1.0, bpc=1.0, bpt=1.0, chars=1, tokens=1)
    assert "line" not in whole.to_json() and whole.text_line() == "-1.0000\t1.0000\tt"


def test_typed_errors_replace_message_matching(tmp_path: Path) -> None:
    from charnn.corpus_cache import load_corpus_cached
    from charnn.data import load_corpus
    from charnn.tokenizer import CharTokenizer

    (tmp_path / "a.txt").write_text("xyz\n")
    tok = CharTokenizer(list("\nab"))
    with pytest.raises(VocabularyError, match="a.txt: 3 character"):
        load_corpus([str(tmp_path / "a.txt")], tokenizer=tok)
    with pytest.raises(VocabularyError, match="a.txt"):
        load_corpus_cached([str(tmp_path / "a.txt")], tok, "strict", str(tmp_path / "cache"))
    (tmp_path / "b.bin").write_bytes(b"ab\x00c")
    with pytest.raises(BinaryData):
        load_corpus_cached([str(tmp_path / "b.bin")], tok, "strict", str(tmp_path / "cache"))


def test_the_format_doc_lists_every_record_field() -> None:
    """docs/checkpoint-format.md's field tables are generated from the records
    (``python -m charnn.record_docs``); this fails when a field is added without them."""
    text = DOC.read_text(encoding="utf-8")
    assert render(text) == text, "record tables are stale: run `python -m charnn.record_docs`"
    assert undocumented(text) == []


def test_train_options_of_a_newer_charnn_are_ignored_for_reading_and_refused_for_resuming(
    trained_run_copy: Path, cli_inprocess
) -> None:
    for which in (ck.LATEST, ck.BEST):
        forge(trained_run_copy / which, ("train", "lookahead_steps"), 0.999)
    meta = ck.load_checkpoint(trained_run_copy).meta
    assert meta.foreign_train == ("lookahead_steps",) and meta.train is not None
    assert cli_inprocess("sample", "-c", trained_run_copy, "--length", "5").returncode == 0
    assert cli_inprocess("info", "-c", trained_run_copy).returncode == 0
    resumed = cli_inprocess("train", "--resume", trained_run_copy, "--steps", "40")
    assert resumed.returncode == 3 and "newer charnn" in resumed.stderr
    assert "lookahead_steps" in resumed.stderr


@settings(max_examples=60, deadline=None)
@given(
    numbers=st.lists(st.floats() | st.integers(-(2**40), 2**40) | st.none(), min_size=4, max_size=4),
)
def test_whatever_training_measures_the_writer_stores_the_reader_accepts(trained_run: Path, numbers) -> None:
    """A diverged validation (NaN) once became metadata that no command could load: what the
    writer writes must always read back."""
    from charnn.checkpoint_meta import Counters

    meta = parse_meta((trained_run / "best" / ck.META).read_bytes(), trained_run / "best")
    loss, bpc, train_loss, best = numbers
    progress = Counters(
        step=3, val={"loss": loss, "bpc": bpc, "step": 3}, train_loss=train_loss, best_val_bpc=best
    )
    again = parse_meta(encode_meta(dataclasses.replace(meta, progress=progress)), trained_run / "best")
    assert again.progress is not None and set(again.progress.val) == {"loss", "bpc", "step"}


def test_a_number_too_long_for_python_is_a_bad_checkpoint(trained_run_copy: Path, cli_inprocess) -> None:
    meta = trained_run_copy / "best" / ck.META
    meta.write_text(meta.read_text().replace('"world_size": 1', '"world_size": ' + "1" * 5000))
    proc = cli_inprocess("info", "-c", trained_run_copy / "best")
    assert proc.returncode == 3 and "not valid JSON" in proc.stderr and "internal error" not in proc.stderr
