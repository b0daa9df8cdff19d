"""A worker in its own process, delivering mail once (a test kills it mid-send).

Settings come from the environment (`KSWIFI_*`); `MAIL_CLAIM_SECONDS` shortens the claim.
"""

from __future__ import annotations

import asyncio
import os

from kswifi.control.config import Settings
from kswifi.control.db import Database
from kswifi.control.deps import AppContext
from kswifi.control.events import InProcessEventBus
from kswifi.control.models import utcnow
from kswifi.control.security import SecretBox
from kswifi.control.worker import Worker


async def main() -> None:
    settings = Settings()
    database = Database(settings.resolved_database_url)
    ctx = AppContext(
        settings, database, SecretBox(settings.ensure_secret_key()), InProcessEventBus()
    )
    worker = Worker(ctx, mail_claim_seconds=float(os.environ["MAIL_CLAIM_SECONDS"]))
    try:
        await worker.deliver_mail(utcnow())
    finally:
        await database.dispose()


if __name__ == "__main__":
    asyncio.run(main())
