"""Request and response models of the notify domain."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AlertChoices(BaseModel):
    """Which alerts reach the person, per channel: {"email": {"usage_80": true, …}}. In a
    request, what is left out keeps its current choice."""

    model_config = ConfigDict(extra="forbid")

    email: dict[str, bool] = Field(default_factory=dict)
    push: dict[str, bool] = Field(default_factory=dict)
