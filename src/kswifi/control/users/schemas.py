"""Request and response models of the users domain."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 256


class _Strict(BaseModel):
    """Request bodies refuse fields they do not know (a typo is an error, not a silent no-op)."""

    model_config = ConfigDict(extra="forbid")


class RegisterIn(_Strict):
    email: EmailStr
    password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)


class EmailIn(_Strict):
    email: EmailStr


class TokenIn(_Strict):
    token: str = Field(min_length=1, max_length=512)


class PasswordResetConfirmIn(TokenIn):
    password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)


class PasswordChangeIn(_Strict):
    current_password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)
    new_password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)


class EmailChangeIn(_Strict):
    password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)
    new_email: EmailStr


class Accepted(BaseModel):
    """The answer to a request whose outcome arrives by e-mail (it never says whether the
    address has an account)."""

    detail: str


class LoginIn(_Strict):
    email: EmailStr
    password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)


class RefreshIn(_Strict):
    refresh_token: str = Field(min_length=1, max_length=512)


class LogoutIn(_Strict):
    refresh_token: str = Field(min_length=1, max_length=512)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    email: str
    is_admin: bool
    email_verified: bool
    created_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _from_user(cls, data: Any) -> Any:
        if hasattr(data, "email_verified_at"):
            return {
                "id": data.id,
                "email": data.email,
                "is_admin": data.is_admin,
                "email_verified": data.email_verified_at is not None,
                "created_at": data.created_at,
            }
        return data


class TokenOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_in: int = Field(description="Seconds until the access token expires")
