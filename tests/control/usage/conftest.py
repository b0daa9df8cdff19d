"""Short-lived streams so a whole SSE response fits in one test."""

from __future__ import annotations

import pytest

from kswifi.control.config import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sse_max_seconds": 2.5})
