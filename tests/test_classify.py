"""`charnn classify`: one character model per class; the label is the likeliest class."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL_ARGS, make_text

from charnn.classify import Item, load_classifier

RunCli = Callable[..., subprocess.CompletedProcess[str]]
TRAIN = (*TINY_MODEL_ARGS, "--steps", "40", "--seq-len", "32", "--batch-size", "8", "--seed", "1", "-q")


def _digits(lines: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return "".join(
        " ".join(str(n) for n in rng.integers(0, 999, rng.integers(3, 9))) + "\n" for _ in range(lines)
    )


def _layout(root: Path, seed: int) -> Path:
    """Two classes that any model tells apart after a few steps: words and numbers."""
    (root / "words").mkdir(parents=True)
    (root / "numbers").mkdir()
    (root / "words" / "a.txt").write_text(make_text(150, seed=seed))
    (root / "words" / "b.txt").write_text(make_text(50, seed=seed + 1))
    (root / "numbers" / "a.txt").write_text(_digits(120, seed))
    return root


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import _run_inprocess

    root = tmp_path_factory.mktemp("classify")
    out = root / "cls"
    proc = _run_inprocess("classify", "train", _layout(root / "data", 0), "-o", out, *TRAIN)
    assert proc.returncode == 0, proc.stderr
    return out


def test_training_writes_one_run_per_class_with_priors(classifier: Path) -> None:
    index = json.loads((classifier / "classifier.json").read_text())
    assert [c["label"] for c in index["classes"]] == ["numbers", "words"]
    numbers, words = index["classes"]
    assert (numbers["files"], words["files"]) == (1, 2) and (numbers["lines"], words["lines"]) == (120, 200)
    for label in ("numbers", "words"):
        assert (classifier / "members" / label / "best" / "meta.json").is_file()
    a, b = (
        json.loads((classifier / "members" / c / "best" / "meta.json").read_text())
        for c in ("numbers", "words")
    )
    assert a["tokenizer"] == b["tokenizer"]  # one vocabulary: the scores are over the same events


def test_lines_get_the_right_label_and_posteriors_that_sum_to_one(classifier: Path, run_cli: RunCli) -> None:
    text = "The cat sat on the mat and the dog ran.\n12 345 6 78 901\nthe old man walks\n"
    proc = run_cli("classify", "-m", classifier, "--json", "-", input=text)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["label"] for r in rows] == ["words", "numbers", "words"]
    assert [r["line"] for r in rows] == [1, 2, 3] and rows[1]["text"] == "12 345 6 78 901"
    for r in rows:
        assert math.isclose(sum(r["posteriors"].values()), 1.0, abs_tol=1e-9)
        assert r["posteriors"][r["label"]] == max(r["posteriors"].values())
        assert all(v < 0 for v in r["logprob"].values())
    plain = run_cli("classify", "-m", classifier, "-", input=text).stdout.splitlines()
    assert plain[1].split("\t")[0] == "numbers" and plain[1].split("\t")[-1] == "12 345 6 78 901"
    assert plain[1].split("\t")[1].startswith("numbers=")


def test_by_file_and_trained_priors(classifier: Path, run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "w.txt").write_text(make_text(5, seed=9))
    (tmp_path / "n.txt").write_text(_digits(5, 9))
    proc = run_cli("classify", "-m", classifier, "--by", "file", tmp_path / "w.txt", tmp_path / "n.txt")
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == ["words", "numbers"]
    model = load_classifier(classifier)
    assert np.allclose(np.exp(model.log_priors("trained", "file")), [1 / 3, 2 / 3])
    assert np.allclose(np.exp(model.log_priors("trained", "line")), [120 / 320, 200 / 320])
    assert np.allclose(np.exp(model.log_priors("uniform", "line")), [0.5, 0.5])
    # The prior moves the posterior exactly by its log ratio.
    item = [Item("x", 1, "12 the 34")]
    flat = model.classify(item, model.log_priors("uniform", "file"))[0].posteriors
    tilted = model.classify(item, model.log_priors("trained", "file"))[0].posteriors
    odds = lambda p: math.log(p["words"] / p["numbers"])  # noqa: E731
    assert odds(tilted) - odds(flat) == pytest.approx(math.log(2))


def test_eval_reports_accuracy_precision_recall_and_confusion(
    classifier: Path, run_cli: RunCli, tmp_path: Path
) -> None:
    held = _layout(tmp_path / "held", 7)
    proc = run_cli("classify", "-m", classifier, "--eval", held, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["labels"] == ["numbers", "words"] and result["items"] == 320
    assert sum(map(sum, result["confusion"])) == 320 and result["accuracy"] >= 0.95
    assert set(result["classes"]["words"]) == {"precision", "recall"}
    table = run_cli("classify", "-m", classifier, "--eval", held).stdout
    assert table.startswith("accuracy ") and "confusion" in table


def test_members_trained_elsewhere(classifier: Path, run_cli: RunCli) -> None:
    members = classifier / "members"
    proc = run_cli(
        "classify", "-c", f"n={members / 'numbers'}", "-c", f"w={members / 'words'}", "-", input="1 2 3 44\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("n\t")


def test_a_million_lines_stream_through_in_batches(classifier: Path) -> None:
    from charnn import classify as cl

    def endless() -> object:
        n = 0
        while True:
            n += 1
            yield Item("<gen>", n, "12 34" if n % 2 else "the cat")

    model = load_classifier(classifier)
    prior = model.log_priors("uniform", "line")
    seen = 0
    for batch in cl.batches(endless()):  # type: ignore[arg-type]
        assert len(batch) == cl.BATCH_LINES  # never more in memory than one batch
        seen += len(model.classify(batch, prior))
        if seen >= 3 * cl.BATCH_LINES:
            break
    assert seen == 3 * cl.BATCH_LINES


# ---------------------------------------------------------------------------- bad input


def test_an_empty_class_is_refused(tmp_path: Path, run_cli: RunCli) -> None:
    data = _layout(tmp_path / "data", 0)
    (data / "empty").mkdir()
    (data / "empty" / "blank.txt").write_text("\n\n  \n")
    proc = run_cli("classify", "train", data, "-o", tmp_path / "cls", *TRAIN)
    assert proc.returncode == 3 and "class 'empty'" in proc.stderr and "no text" in proc.stderr
    assert not (tmp_path / "cls" / "classifier.json").exists()


def test_one_class_is_not_a_classifier(tmp_path: Path, run_cli: RunCli) -> None:
    data = _layout(tmp_path / "data", 0)
    shutil.rmtree(data / "numbers")
    proc = run_cli("classify", "train", data, "-o", tmp_path / "cls", *TRAIN)
    assert proc.returncode == 2 and "at least 2 class" in proc.stderr


def test_members_that_disagree_on_the_tokenizer_are_refused(
    classifier: Path, trained_run: Path, corpus_file: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    bpe = tmp_path / "bpe"
    made = run_cli("train", corpus_file, "--out", bpe, "--tokenizer", "bpe", "--vocab-size", "400", *TRAIN)
    assert made.returncode == 0, made.stderr
    proc = run_cli("classify", "-c", f"a={trained_run}", "-c", f"b={bpe}", "-", input="hello\n")
    assert proc.returncode == 3 and "disagree on the tokenizer" in proc.stderr and "b: bpe" in proc.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "give a classifier with -m"),
        (["-c", "only=x"], 2, "at least 2"),
        (["-c", "no-equals-sign", "-c", "b=y"], 2, "LABEL=RUN"),
    ],
)
def test_usage_errors(run_cli: RunCli, trained_run: Path, args: list[str], code: int, message: str) -> None:
    args = [a.replace("only=x", f"only={trained_run}").replace("b=y", f"b={trained_run}") for a in args]
    proc = run_cli("classify", *args, "-", input="x\n")
    assert proc.returncode == code and message in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize(
    "forge",
    [
        lambda c: c["classes"][0].update(run="../../elsewhere"),
        lambda c: c["classes"][0].update(label="a\nb"),
        lambda c: c["classes"][0].update(files=-1),
        lambda c: c["classes"][0].update(lines=True),
        lambda c: c["classes"].pop(),
        lambda c: c.update(version=99),
        lambda c: c["classes"][0].update(extra=1),
    ],
)
def test_forged_classifier_files_are_bad_input(
    classifier: Path, tmp_path: Path, run_cli: RunCli, forge: Callable[[dict], object]
) -> None:
    copy = tmp_path / "cls"
    shutil.copytree(classifier, copy)
    index = json.loads((copy / "classifier.json").read_text())
    forge(index)
    (copy / "classifier.json").write_text(json.dumps(index))
    proc = run_cli("classify", "-m", copy, "-", input="hello\n")
    assert (
        proc.returncode in (2, 3)
        and proc.stderr.startswith("charnn: error:")
        and "Traceback" not in proc.stderr
    )
    assert proc.stdout == ""


def test_eval_with_a_class_the_classifier_lacks(classifier: Path, tmp_path: Path, run_cli: RunCli) -> None:
    held = _layout(tmp_path / "held", 3)
    (held / "numbers").rename(held / "digits")
    proc = run_cli("classify", "-m", classifier, "--eval", held)
    assert proc.returncode == 3 and "'digits' is not one of the classifier's" in proc.stderr
