"""Request models of the accounts domain."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kswifi.control.users.schemas import PASSWORD_MAX_LENGTH


class DeleteAccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)
