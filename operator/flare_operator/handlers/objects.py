"""What every reconcile reads first from the object it is about: names, generation, typed spec
and the previous status (only our own fields of it)."""

from __future__ import annotations

from typing import ClassVar

from ..api.base import ApiModel


class ObjectView:
    spec_model: ClassVar[type[ApiModel]]
    status_model: ClassVar[type[ApiModel]]

    def __init__(self, body: dict):
        self.body = body
        meta = body["metadata"]
        self.namespace, self.name, self.uid = meta.get("namespace"), meta["name"], meta.get("uid", "")
        self.generation = meta.get("generation", 1)
        self.labels = meta.get("labels") or {}
        self.spec = self.spec_model.model_validate(body["spec"])
        self.previous = self.status_model.model_validate(self.status_model.own_fields(body.get("status")))
