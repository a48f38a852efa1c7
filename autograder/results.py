"""Grading results: frozen dataclasses, serialised to JSON, rendered elsewhere."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["CheckResult", "CheckStatus", "GradingResult"]

CheckStatus = Literal["pass", "partial", "fail", "error"]


@dataclass(frozen=True)
class CheckResult:
    id: str
    title: str
    kind: str
    points: float
    score: float
    status: CheckStatus
    messages: tuple[str, ...] = ()

    @classmethod
    def scored(
        cls, check: Any, fraction: float, messages: list[str] | tuple[str, ...]
    ) -> CheckResult:
        fraction = min(1.0, max(0.0, fraction))
        status: CheckStatus = (
            "pass" if fraction >= 1.0 else "fail" if fraction <= 0.0 else "partial"
        )
        score = round(check.points * fraction, 2)
        return cls(check.id, check.title, check.kind, check.points, score, status, tuple(messages))

    @classmethod
    def failed(cls, check: Any, message: str, *, status: CheckStatus = "fail") -> CheckResult:
        return cls(check.id, check.title, check.kind, check.points, 0.0, status, (message,))


@dataclass(frozen=True)
class GradingResult:
    """Everything the grader concluded about one submitted notebook."""

    lab: str
    data_source: str
    checks: tuple[CheckResult, ...]
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    model: dict[str, Any] | None = None
    # Numbers for the feedback's pictures, computed in the clean evaluation process:
    # ``confusion_matrix`` ({"labels", "matrix"}: held-out counts, aggregates only),
    # ``predicted_vs_true`` ({"pairs": [[true, predicted], ...]}: the public test split);
    # ``heldout_examples``: how many held-out examples the metrics were computed on.
    figures: dict[str, Any] = field(default_factory=dict)
    # The model's score on other data, for the instructor (see autograder.grading.review.WITNESSES),
    # and the test sample's size (``<metric>@test_examples``).
    witnesses: dict[str, float] = field(default_factory=dict)
    # Reasons to review this grade (grading.review): instructors' eyes only, never scored.
    review: tuple[str, ...] = ()
    # How the held-out inputs were prepared for the model (autograder.grading.preparation).
    preparation: str = ""
    # The rubric that scored it (autograder.rubric.rubric_version): stated in the gradebook.
    rubric: str = ""

    @property
    def score(self) -> float:
        return round(sum(c.score for c in self.checks), 2)

    @property
    def max_score(self) -> float:
        return sum(c.points for c in self.checks)

    def check(self, check_id: str) -> CheckResult:
        return next(c for c in self.checks if c.id == check_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GradingResult:
        # Fields added later (``figures``, ``review``) have defaults: older results still load.
        data = json.loads(text)
        data["review"] = tuple(data.get("review", ()))
        data["checks"] = tuple(
            CheckResult(**{**c, "messages": tuple(c["messages"])}) for c in data["checks"]
        )
        return cls(**data)
