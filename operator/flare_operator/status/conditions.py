"""Pure helpers for metav1.Condition lists: transitions keep their time, nothing else moves."""

from __future__ import annotations

from datetime import datetime

from ..api.common import Condition, ConditionStatus


def set_condition(conditions: list[Condition], *, type_: str, status: bool | None, reason: str, message: str,
                  generation: int | None, now: datetime) -> list[Condition]:
    """Return a new list with `type_` set; lastTransitionTime changes only when status changes."""
    value = ConditionStatus.UNKNOWN if status is None else (ConditionStatus.TRUE if status else ConditionStatus.FALSE)
    previous = next((c for c in conditions if c.type == type_), None)
    since = previous.last_transition_time if previous is not None and previous.status == value else now
    updated = Condition(type=type_, status=value, reason=reason, message=message[:32768],
                        last_transition_time=since, observed_generation=generation)
    return [updated if c.type == type_ else c for c in conditions] if previous else [*conditions, updated]


class Conditions:
    """Builds one status's condition list: every set() keeps the others and their transition times."""

    def __init__(self, previous: list[Condition], *, generation: int | None, now: datetime):
        self.items = list(previous)
        self.generation = generation
        self.now = now

    def set(self, type_: str, ok: bool | None, reason: str, message: str) -> None:
        self.items = set_condition(self.items, type_=type_, status=ok, reason=reason, message=message,
                                   generation=self.generation, now=self.now)

    def message(self, type_: str) -> str:
        found = get_condition(self.items, type_)
        return found.message if found else ""


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    c = get_condition(conditions, type_)
    return c is not None and c.status == ConditionStatus.TRUE
