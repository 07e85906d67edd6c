"""How much to regularise a run, from the passes over its training text it plans (no torch).

A short run sees its text once or twice and cannot overfit: regularising it only slows
learning. A long one (20 minutes is about 30 passes over tiny Shakespeare) overfits without
it. :func:`regularisation_for` turns the planned number of epochs into settings for the
options it owns (dropout, weight-drop, weight decay, weight averaging), measured with
``benchmarks/regularisation.py`` (tables in docs/regularisation.md). :func:`plan` applies them
to a run, leaving every option the user typed as typed.

The one caller is the budget's choice (:func:`charnn.run_plan.choose_shape`): it knows how many
training tokens the run buys (from ``--time`` and the measured speed, or ``--steps``/``--epochs``),
so it knows the passes. A run whose shape the user typed, a fine-tuned run and a resumed one are
never planned here: they train with exactly the options given (a resumed run keeps its own).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

# Planned passes over the training text from which charnn regularises. Below it every
# regulariser measured cost validation bpc (docs/regularisation.md: 3 and 6 epochs).
REGULARISE_FROM = 8.0


@dataclass(frozen=True)
class Regularisation:
    """Values for the options this module plans (ModelConfig: dropout, weight_drop;
    TrainConfig: weight_decay, average, average_from)."""

    dropout: float = 0.0
    weight_drop: float = 0.0
    weight_decay: float = 0.01
    average: str = "none"
    average_from: float = 0.5

    MODEL_FIELDS: ClassVar[tuple[str, ...]] = ("dropout", "weight_drop")
    TRAIN_FIELDS: ClassVar[tuple[str, ...]] = ("weight_decay", "average", "average_from")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The settings in the words of the options that set them."""
        parts = [f"--dropout {self.dropout:g}", f"--weight-drop {self.weight_drop:g}"]
        parts.append(f"--weight-decay {self.weight_decay:g}")
        if self.average != "none":
            parts.append(f"--average {self.average} from {self.average_from:.0%}")
        return ", ".join(parts)


NONE = Regularisation()


def regularisation_for(epochs_planned: float | None) -> Regularisation:
    """The regularisation for a run planned to pass ``epochs_planned`` times over its training
    text (None: unknown, nothing is switched on)."""
    if epochs_planned is None or epochs_planned < REGULARISE_FROM:
        return NONE
    # Measured (docs/regularisation.md): weight-drop 0.25 with weight decay 0.1 won at 10, 20 and
    # 30 epochs; dropout, even 0.1, lost everywhere on top of them. The EMA costs a second
    # validation in the run's second half (~2 % of a run) and reaches best/ only when better.
    return Regularisation(weight_drop=0.25, weight_decay=0.1, average="ema")


@dataclass(frozen=True)
class Plan:
    """The regularisation options a run gets: the typed ones as typed, the others planned."""

    model: dict[str, Any]  # ModelConfig fields this plan sets (never a typed one)
    train: dict[str, Any]  # TrainConfig fields this plan sets
    used: Regularisation  # what the run trains with, typed or planned
    epochs: float | None

    @property
    def active(self) -> bool:
        """Whether the plan set anything (it is then recorded and said)."""
        return bool(self.model or self.train)

    def note(self) -> str:
        """The start-up line that says what was chosen and why."""
        typed = len(self.model) + len(self.train) < len(
            Regularisation.MODEL_FIELDS + Regularisation.TRAIN_FIELDS
        )
        epochs = f"~{self.epochs:.0f}" if self.epochs is not None else "many"
        return f"regularising for {epochs} planned epochs: {self.used.describe()}" + (
            " (typed options kept)" if typed else ""
        )


def plan(model: dict[str, Any], train: dict[str, Any], epochs_planned: float | None) -> Plan:
    """Plan the regularisation options the user did not type (``model`` and ``train`` hold only
    the typed ones, as ``TrainRequest`` does) from :func:`regularisation_for`."""
    chosen = regularisation_for(epochs_planned)
    if chosen == NONE:
        return Plan({}, {}, chosen, epochs_planned)
    values = chosen.to_dict()
    new_model = {k: values[k] for k in Regularisation.MODEL_FIELDS if k not in model}
    new_train = {k: values[k] for k in Regularisation.TRAIN_FIELDS if k not in train}
    typed = {k: v for k, v in {**model, **train}.items() if k in values}
    used = Regularisation(**{**values, **typed})
    return Plan(new_model, new_train, used, epochs_planned)
