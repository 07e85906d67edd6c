"""``charnn classify``: a generative classifier, one character model per class.

A text's label is the class whose model finds it likeliest, weighted by the class prior::

    p(class | text) ∝ p(text | class's model) · p(class)      (log-sum-exp over the classes)

Layout of a classifier directory (``charnn classify train DATA_DIR -o CLS``)::

    CLS/
      classifier.json        labels, member runs, priors (files, lines, characters per class)
      members/LABEL/         one ordinary charnn run per class (best/, latest/, metrics.jsonl)

All members of a trained classifier share one character vocabulary (every class's characters,
plus an unknown symbol for characters no class has seen), so their log-likelihoods are over the
same events and can be compared. Members given as ``-c LABEL=RUN`` must agree on the tokenizer.
Inputs are read line by line and scored in batches on the numpy path: memory stays constant
however long the input.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from charnn.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    from charnn.checkpoint import Checkpoint
    from charnn.tokenizer import Tokenizer

FORMAT = "charnn-classifier"
VERSION = 1
INDEX = "classifier.json"
MEMBERS = "members"
BATCH_LINES = 256
_LABEL = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,100}$")


@dataclass(frozen=True)
class ClassInfo:
    """One class: its label, its member run and how much training text it had."""

    label: str
    run: str  # relative to the classifier directory, or any path for -c LABEL=RUN
    files: int = 0
    lines: int = 0
    chars: int = 0


@dataclass(frozen=True)
class Item:
    """One input to classify: a line of a file, or a whole file."""

    source: str
    line: int | None  # 1-based; None for --by file
    text: str


@dataclass(frozen=True)
class Verdict:
    """The label of one item and every class's posterior probability and log-likelihood (nats)."""

    item: Item
    label: str
    posteriors: dict[str, float]
    logprobs: dict[str, float]


# ---------------------------------------------------------------------------- the classifier


class Classifier:
    """The member models, ready to score (numpy), and the priors."""

    def __init__(self, classes: Sequence[ClassInfo], members: Sequence[Checkpoint]) -> None:
        from charnn.stepper import FastStepper

        _check_members(classes, members)
        self.classes = list(classes)
        self.labels = [c.label for c in classes]
        self.members = list(members)
        self.steppers = [FastStepper(m.config, m.weights) for m in members]

    def log_priors(self, prior: str, by: str) -> np.ndarray:
        """(C,) log p(class): uniform, or from the training data in the unit classified (files or lines)."""
        if prior == "uniform":
            counts = np.ones(len(self.classes))
        else:
            counts = np.array([float(c.files if by == "file" else c.lines) for c in self.classes])
            if not (counts > 0).all():
                raise ConfigError(
                    "--prior trained needs the training counts of every class (a trained classifier)"
                )
        return np.log(counts / counts.sum())

    def classify(self, items: Sequence[Item], log_prior: np.ndarray) -> list[Verdict]:
        """Score a batch of items under every member and turn the scores into posteriors."""
        logprobs = np.stack(
            [self._member_logprobs(i, items) for i in range(len(self.members))], axis=1
        )  # (N, C)
        joint = logprobs + log_prior[None, :]
        posterior = np.exp(joint - np.logaddexp.reduce(joint, axis=1, keepdims=True))
        verdicts = []
        for n, item in enumerate(items):
            best = int(np.argmax(joint[n]))
            verdicts.append(
                Verdict(
                    item,
                    self.labels[best],
                    {label: float(posterior[n, c]) for c, label in enumerate(self.labels)},
                    {label: float(logprobs[n, c]) for c, label in enumerate(self.labels)},
                )
            )
        return verdicts

    def _member_logprobs(self, index: int, items: Sequence[Item]) -> np.ndarray:
        from charnn.scoring import score_lines, token_char_lengths, token_extra_nats

        member = self.members[index]
        tokenizer = member.tokenizer
        encoded = []
        for item in items:
            try:
                encoded.append(tokenizer.encode(item.text) if item.text else np.zeros(0, dtype=np.int64))
            except DataError as exc:
                raise DataError(f"{_where(item)}: class {self.labels[index]!r}: {exc}") from None
        scores = score_lines(
            self.steppers[index],
            tokenizer.start_ids(),
            encoded,
            token_char_lengths(tokenizer),
            extra_nats=token_extra_nats(tokenizer),
        )
        return np.array([s.logprob for s in scores])


def _check_members(classes: Sequence[ClassInfo], members: Sequence[Checkpoint]) -> None:
    if len(classes) < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {len(classes)}")
    labels = [c.label for c in classes]
    if len(set(labels)) != len(labels):
        raise ConfigError("class labels must be distinct: " + ", ".join(sorted(labels)))
    kinds = {m.tokenizer.kind for m in members}
    if len(kinds) > 1:
        detail = ", ".join(f"{c.label}: {m.tokenizer.kind}" for c, m in zip(classes, members, strict=True))
        raise DataError(f"the members disagree on the tokenizer ({detail}); their scores cannot be compared")


def _where(item: Item) -> str:
    return item.source if item.line is None else f"{item.source}:{item.line}"


# ---------------------------------------------------------------------------- storage


def load_classifier(path: str | os.PathLike[str]) -> Classifier:
    """A classifier directory written by :func:`train_classifier`, every field validated."""
    from charnn.checkpoint import load_checkpoint

    root = Path(path)
    index = root / INDEX
    if not index.is_file():
        raise CheckpointError(
            f"{path}: not a classifier (no {INDEX}); train one with 'charnn classify train'"
        )
    try:
        data = json.loads(index.read_bytes()[: 1 << 20].decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{index}: unreadable ({exc})") from None
    classes = _parse_index(data, index)
    members = []
    for c in classes:
        run = (root / c.run).resolve()
        if root.resolve() not in run.parents:
            raise CheckpointError(f"{index}: member {c.label!r} lies outside the classifier directory")
        members.append(load_checkpoint(str(run)))
    return Classifier(classes, members)


def _parse_index(data: Any, where: Path) -> list[ClassInfo]:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: {what}")

    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise bad(f"not a {FORMAT} file of version {VERSION}")
    raw = data.get("classes")
    if not isinstance(raw, list) or not raw:
        raise bad("'classes' must be a non-empty list")
    classes = []
    for entry in raw:
        if not isinstance(entry, dict) or set(entry) != {"label", "run", "files", "lines", "chars"}:
            raise bad("each class needs exactly label, run, files, lines and chars")
        label, run = entry["label"], entry["run"]
        if not isinstance(label, str) or not _LABEL.match(label):
            raise bad(f"bad class label {label!r}")
        if not isinstance(run, str) or run != f"{MEMBERS}/{label}":
            raise bad(f"class {label!r}: its run must be {MEMBERS}/{label}")
        counts = [entry[k] for k in ("files", "lines", "chars")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1 << 62 for v in counts):
            raise bad(f"class {label!r}: files, lines and chars must be positive integers")
        classes.append(ClassInfo(label, run, *counts))
    return classes


def members_from_runs(pairs: Sequence[str]) -> Classifier:
    """``-c LABEL=RUN`` options: members trained elsewhere (uniform prior only)."""
    from charnn.checkpoint import load_checkpoint

    classes, members = [], []
    for pair in pairs:
        label, sep, run = pair.partition("=")
        if not sep or not run or not _LABEL.match(label):
            raise ConfigError(f"-c takes LABEL=RUN, got {pair!r}")
        classes.append(ClassInfo(label, run))
        members.append(load_checkpoint(run))
    return Classifier(classes, members)


# ---------------------------------------------------------------------------- training


def class_dirs(data_dir: str) -> list[tuple[str, Path]]:
    """The classes of DATA_DIR: its subdirectories, by name."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{data_dir}: not a directory (it must hold one subdirectory per class)")
    found = sorted((p.name, p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for label, _ in found:
        if not _LABEL.match(label):
            raise DataError(f"{data_dir}: a class directory's name cannot be a label: {label!r}")
    if len(found) < 2:
        raise ConfigError(
            f"{data_dir}: a classifier needs at least 2 class subdirectories, found {len(found)}"
        )
    return found


def shared_vocabulary(texts: Iterable[str]) -> Tokenizer:
    """Every class's characters plus an unknown symbol, so any member can score any text."""
    from charnn.tokenizer import CharTokenizer

    chars = sorted(set().union(*(set(t) for t in texts)))
    return CharTokenizer(chars, unk=1)


def read_class(label: str, path: Path, encoding_errors: str) -> tuple[list[str], ClassInfo]:
    from charnn.data import read_corpus

    try:
        texts = read_corpus([str(path)], encoding_errors).texts
    except DataError as exc:
        raise DataError(f"class {label!r}: {exc}") from None
    text_files = [t for t in texts if t.strip()]
    if not text_files:
        raise DataError(f"class {label!r} ({path}) has no text")
    lines = sum(sum(1 for line in t.split("\n") if line.strip()) for t in text_files)
    return texts, ClassInfo(label, f"{MEMBERS}/{label}", len(text_files), lines, sum(map(len, texts)))


def write_index(root: Path, classes: Sequence[ClassInfo]) -> None:
    from charnn.atomic import write_atomic

    data = {"format": FORMAT, "version": VERSION, "classes": [vars(c) for c in classes]}
    write_atomic(root / INDEX, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def train_classifier(
    data_dir: str,
    out: str,
    model: dict[str, Any],
    train: dict[str, Any],
    force: bool = False,
    quiet: bool = False,
    encoding_errors: str = "strict",
) -> list[ClassInfo]:
    """One run per class of DATA_DIR in OUT/members/LABEL, sharing the time budget equally
    (``--time`` is the whole classifier's) and one vocabulary; then OUT/classifier.json."""
    from charnn.app import TrainRequest, start_training
    from charnn.console import note, shown
    from charnn.trainer import DEFAULT_TIME

    root = Path(out)
    if (root / INDEX).exists() and not force:
        raise ConfigError(f"{out}/ already holds a classifier; pick another -o or replace it with --force")
    found = class_dirs(data_dir)
    read = [read_class(label, path, encoding_errors) for label, path in found]  # all read before training
    vocabulary = shared_vocabulary(text for texts, _ in read for text in texts)
    share = dict(train)
    if "steps" not in train and "epochs" not in train:
        share["time_limit"] = (train.get("time_limit") or DEFAULT_TIME) / len(found)
    for (label, path), (_, info) in zip(found, read, strict=True):
        note(f"class {shown(label)}: {info.files} file(s), {info.lines:,} lines, {info.chars:,} characters")
        request = TrainRequest(
            files=[str(path)],
            out=str(root / info.run),
            force=force,
            quiet=quiet,
            encoding_errors=encoding_errors,
            model=dict(model),
            train=share,
            vocabulary=vocabulary,
        )
        start_training(request)
    classes = [info for _, info in read]
    write_index(root, classes)
    return classes


# ---------------------------------------------------------------------------- reading inputs


def items(sources: Sequence[str], by: str, encoding_errors: str) -> Iterator[Item]:
    """The inputs one by one: lines as they are read (constant memory), or whole files."""
    from charnn.data import read_source, resolve_sources

    resolved, _ = resolve_sources(list(sources) or ["-"])
    for source in resolved:
        name = "<stdin>" if source == "-" else source
        if by == "file":
            yield Item(name, None, read_source(source, encoding_errors))
            continue
        for n, line in enumerate(_lines(source, encoding_errors), 1):
            if line.strip():
                yield Item(name, n, line)


def _lines(source: str, encoding_errors: str) -> Iterator[str]:
    """The lines of a file or stdin, decoded as they are read (one line in memory at a time)."""
    try:
        raw = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise DataError(f"{source}: cannot read ({exc.strerror or exc})") from None
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors=encoding_errors, newline="\n")
    n = 0
    try:
        for n, line in enumerate(stream, 1):  # noqa: B007 (n names the line in errors)
            yield line.rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source}:{n + 1}: not UTF-8 ({exc.reason}); see --encoding-errors") from None
    finally:
        stream.detach()  # stdin stays open for others; a file is closed here
        if source != "-":
            raw.close()


def batches(stream: Iterable[Item], size: int = BATCH_LINES) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in stream:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def verdict_line(verdict: Verdict) -> str:
    """``LABEL<TAB>a=P<TAB>b=P...<TAB>TEXT`` (the file name for --by file)."""
    posteriors = "\t".join(f"{label}={p:.4f}" for label, p in verdict.posteriors.items())
    shown = verdict.item.text if verdict.item.line is not None else _printable(verdict.item.source)
    return f"{verdict.label}\t{posteriors}\t{shown}"


def verdict_json(verdict: Verdict) -> str:
    item = verdict.item
    row: dict[str, Any] = {"source": _printable(item.source)}
    if item.line is not None:
        row.update(line=item.line, text=item.text)
    row.update(label=verdict.label, posteriors=verdict.posteriors, logprob=verdict.logprobs)
    return json.dumps(row, ensure_ascii=False)


def _printable(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------- evaluation


def evaluate(
    model: Classifier, labelled: str, by: str, log_prior: np.ndarray, encoding_errors: str = "strict"
) -> Evaluation:
    """Classify every item of a directory laid out like DATA_DIR and count what went where."""
    index = {label: i for i, label in enumerate(model.labels)}
    confusion = [[0] * len(model.labels) for _ in model.labels]
    for label, path in class_dirs(labelled):
        if label not in index:
            raise DataError(
                f"{labelled}: class {label!r} is not one of the classifier's ({', '.join(model.labels)})"
            )
        for batch in batches(items([str(path)], by, encoding_errors)):
            for verdict in model.classify(batch, log_prior):
                confusion[index[label]][index[verdict.label]] += 1
    result = Evaluation(model.labels, confusion)
    if result.total == 0:
        raise DataError(f"{labelled}: no text to classify")
    return result


@dataclass(frozen=True)
class Evaluation:
    """Accuracy, per-class precision and recall, and the confusion matrix (rows: true labels)."""

    labels: list[str]
    confusion: list[list[int]]

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        return sum(self.confusion[i][i] for i in range(len(self.labels))) / max(self.total, 1)

    def precision(self, i: int) -> float:
        predicted = sum(row[i] for row in self.confusion)
        return self.confusion[i][i] / predicted if predicted else math.nan

    def recall(self, i: int) -> float:
        actual = sum(self.confusion[i])
        return self.confusion[i][i] / actual if actual else math.nan

    def to_json(self) -> dict[str, Any]:
        nan_free = lambda v: None if math.isnan(v) else v  # noqa: E731 (JSON has no NaN)
        return {
            "items": self.total,
            "accuracy": self.accuracy,
            "classes": {
                label: {"precision": nan_free(self.precision(i)), "recall": nan_free(self.recall(i))}
                for i, label in enumerate(self.labels)
            },
            "labels": self.labels,
            "confusion": self.confusion,
        }

    def table(self) -> str:
        width = max(8, *map(len, self.labels))
        lines = [f"accuracy {self.accuracy:.4f} on {self.total} items", ""]
        lines.append(f"{'class':<{width}}  precision  recall")
        for i, label in enumerate(self.labels):
            lines.append(f"{label:<{width}}  {self.precision(i):9.4f}  {self.recall(i):6.4f}")
        lines += ["", "confusion (rows: true class, columns: predicted)"]
        lines.append(" " * width + "  " + "  ".join(f"{label:>{width}}" for label in self.labels))
        for label, row in zip(self.labels, self.confusion, strict=True):
            lines.append(f"{label:<{width}}  " + "  ".join(f"{v:>{width}}" for v in row))
        return "\n".join(lines)
