"""What a password must be: long enough, and none of the 30,000 most common passwords (the
list zxcvbn ships, drawn from real leaks), nor the account's own e-mail address."""

from __future__ import annotations

from functools import lru_cache

from zxcvbn.frequency_lists import FREQUENCY_LISTS

from kswifi.control.errors import Unprocessable
from kswifi.control.users.schemas import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH


@lru_cache(maxsize=1)
def _common() -> frozenset[str]:
    return frozenset(FREQUENCY_LISTS["passwords"])


def is_common(password: str) -> bool:
    """True for a password found in the common-password list, ignoring case and the spaces
    around it."""
    return password.strip().lower() in _common()


def check_password(password: str, email: str | None = None) -> None:
    """Unprocessable (422, field `password`) with the reason, else nothing."""
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise Unprocessable(
            f"Use a password of {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters.",
            field="password",
        )
    lowered = password.strip().lower()
    if is_common(password) or (
        email and lowered in {email.lower(), email.lower().partition("@")[0]}
    ):
        raise Unprocessable(
            "That password is one of the most common ones (or your e-mail address) and easy "
            "to guess. Choose another.",
            field="password",
        )
