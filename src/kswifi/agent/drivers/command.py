"""Run external commands: argument lists, a timeout, failures as `CommandError` with stderr."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kswifi.agent.errors import CommandError

DEFAULT_TIMEOUT_S = 20.0


class Runner(Protocol):
    """Something that runs a command and returns its stdout (drivers get one injected)."""

    def __call__(
        self, argv: Sequence[str], *, input_text: str | None = None, timeout: float | None = None
    ) -> str: ...


# Tools that enter a network namespace themselves (`-netns NAME`, a setns): `ip netns exec`
# also unshares the mount namespace and remounts /sys, about 14 ms per command, which would
# be most of a one-peer reconcile's `tc -batch`.
_NETNS_OPTION = {"ip": "-netns", "tc": "-netns"}


@dataclass
class CommandRunner:
    """Runs commands with `subprocess.run`, optionally inside a network namespace."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    netns: str | None = None
    calls: list[list[str]] = field(default_factory=list, repr=False)
    record: bool = False

    def __call__(
        self, argv: Sequence[str], *, input_text: str | None = None, timeout: float | None = None
    ) -> str:
        full = list(argv)
        if self.netns is not None:
            option = _NETNS_OPTION.get(full[0])
            if option is not None:
                full = [full[0], option, self.netns, *full[1:]]
            else:
                full = ["ip", "netns", "exec", self.netns, *full]
        if self.record:
            self.calls.append(full)
        if shutil.which(full[0]) is None:
            raise CommandError(full, None, f"{full[0]} not found in PATH", reason="is missing")
        try:
            done = subprocess.run(
                full,
                input=input_text,
                capture_output=True,
                text=True,
                timeout=timeout if timeout is not None else self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise CommandError(full, None, stderr, reason="timed out") from exc
        except OSError as exc:
            raise CommandError(full, None, str(exc), reason="could not start") from exc
        if done.returncode != 0:
            raise CommandError(full, done.returncode, done.stderr)
        return done.stdout
