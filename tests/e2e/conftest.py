"""Fixtures for the end-to-end suite (root, namespaces, the real control plane and agent)."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.netlab import Lab, root_skip_reason

from .harness import KSWIFI, E2ESystem, build_system


def e2e_skip_reason() -> str | None:
    reason = root_skip_reason()
    if reason:
        return reason
    if importlib.util.find_spec("kswifi.control.app") is None:
        return "the control plane (kswifi.control.app) is not there yet"
    if not Path(KSWIFI).exists():
        return f"{KSWIFI} is missing (pip install -e .)"
    if shutil.which("iperf3") is None:
        return "iperf3 is missing (apt-get install iperf3)"
    try:
        import zxingcpp  # noqa: F401
    except ImportError:
        return "zxing-cpp is missing (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def system() -> Iterator[E2ESystem]:
    reason = e2e_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    data_dir = Path(tempfile.mkdtemp(prefix=f"kswifi-e2e-{lab.prefix}-"))
    try:
        yield build_system(lab, data_dir)
    finally:
        lab.cleanup()
        if (data_dir / "agent.log").exists():
            print("---- agent log (tail) ----")
            print("\n".join((data_dir / "agent.log").read_text().splitlines()[-40:]))
        shutil.rmtree(data_dir, ignore_errors=True)
