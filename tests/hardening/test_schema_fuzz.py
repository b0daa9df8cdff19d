"""schemathesis over the app's own OpenAPI schema, against a real `kswifi serve` on loopback.

Every operation is called with generated valid and invalid input, as a normal user and as an
operator (and with a gateway token for `/api/gateway/v1/*`); half of the cases aim at real
resources (the user's own session, device and purchase; the operator's spare gateway and a
victim account), so the success paths are fuzzed too. What must hold for every answer:
no 500 (no `internal_error`), and a body that matches its documented schema and media type.

`KSWIFI_FUZZ_EXAMPLES` (default 5) bounds the examples per operation, role and mode.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from kswifi.control.app import create_app
from kswifi.control.config import Settings
from tests.hardening.live import LiveServer, Person, ok, person

EXAMPLES = int(os.environ.get("KSWIFI_FUZZ_EXAMPLES", "5"))


def _load_schema() -> Any:
    app = create_app(Settings(secret_key="schema-only-" + "x" * 24))  # type: ignore[arg-type]
    return schemathesis.openapi.from_dict(app.openapi())


SCHEMA = _load_schema()
OPERATIONS = {op.ok().label: op.ok() for op in SCHEMA.get_all_operations()}


def _roles(label: str) -> list[str]:
    if " /api/gateway/v1/" in label:
        return ["gateway"]
    return ["user", "admin"]


CASES = [(label, role) for label in sorted(OPERATIONS) for role in _roles(label)]


@dataclass
class FuzzWorld:
    server: LiveServer
    user: Person
    admin: Person
    gateway_token: str
    real: dict[str, dict[str, str]]  # role -> path parameter -> a real value


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    server = LiveServer(tmp_path_factory.mktemp("fuzz") / "data")
    server.start()
    try:
        admin = person(server, admin=True, label="admin")
        user = person(server, label="user")
        victim = person(server, label="victim")
        with server.client() as http:
            created = ok(
                http.post(
                    "/api/admin/gateways",
                    json={"name": "fz-a", "region": "eu-west", "endpoint": "fz-a.example:51820"},
                    headers=admin.headers,
                ),
                201,
            )
            spare = ok(
                http.post(
                    "/api/admin/gateways",
                    json={"name": "fz-c", "region": "us-east", "endpoint": "fz-c.example:51820"},
                    headers=admin.headers,
                ),
                201,
            )
            bought = ok(
                http.post(
                    "/api/purchases",
                    json={"plan_code": "ultra", "payment_method": "dev"},
                    headers=user.headers,
                ),
                201,
            )
            profile = ok(
                http.post(
                    "/api/connect/generate-profile",
                    json={"session_id": bought["session_id"], "region": "eu-west"},
                    headers=user.headers,
                )
            )
            victim_bought = ok(
                http.post(
                    "/api/purchases",
                    json={"plan_code": "basic", "payment_method": "dev"},
                    headers=victim.headers,
                ),
                201,
            )
        own = {
            "session_id": bought["session_id"],
            "purchase_id": bought["id"],
            "connect_id": profile["connect_id"],
        }
        operator = {
            "session_id": victim_bought["session_id"],
            "user_id": victim.id,
            "gateway_id": spare["gateway"]["id"],
        }
        yield FuzzWorld(
            server=server,
            user=user,
            admin=admin,
            gateway_token=created["token"],
            real={"user": own, "admin": {**own, **operator}, "gateway": own},
        )
    finally:
        server.stop()


def _real_path_parameters(operation: Any, role: str, world: FuzzWorld) -> dict[str, str]:
    names = re.findall(r"\{(\w+)\}", operation.path)
    values = dict(world.real[role])
    values["code"] = "eu-west" if "/regions/" in operation.path else "basic"
    return {name: values[name] for name in names if name in values}


def _headers(role: str, world: FuzzWorld) -> dict[str, str]:
    if role == "gateway":
        return {"Authorization": f"Bearer {world.gateway_token}"}
    who = world.admin if role == "admin" else world.user
    return dict(who.headers)


def _no_server_error(response: Any, label: str) -> None:
    """No 500; every refusal in the one error shape `{"error": {"code", "message"}}`."""
    if response.status_code == 500:
        raise AssertionError(f"{label}: 500 {response.text[:500]}")
    if response.status_code < 400 or label.startswith("HEAD "):  # HEAD answers carry no body
        return
    content_type = response.headers.get("content-type", [""])
    assert any(value.startswith("application/json") for value in content_type), label
    error = response.json().get("error")
    assert isinstance(error, dict), (label, response.text[:500])
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), label
    # 503 is a designed answer (no gateway free, payments not set up); never a crash.
    assert error["code"] != "internal_error", (label, response.text[:500])


@pytest.mark.parametrize(("label", "role"), CASES, ids=[f"{r}:{lbl}" for lbl, r in CASES])
def test_operation(label: str, role: str, fuzz_world: FuzzWorld) -> None:
    operation = OPERATIONS[label]
    headers = _headers(role, fuzz_world)
    real = _real_path_parameters(operation, role, fuzz_world)
    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategies.append(operation.as_strategy(mode))
        if real:
            strategies.append(operation.as_strategy(mode, path_parameters=real))
    checks = [response_schema_conformance, content_type_conformance]

    @settings(
        max_examples=EXAMPLES * len(strategies),
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(*strategies))
    def run(case: Any) -> None:
        response = case.call(base_url=fuzz_world.server.url, headers=headers, timeout=30)
        _no_server_error(response, label)
        case.validate_response(response, checks=checks, headers=headers)

    run()


def test_every_operation_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 40, sorted(OPERATIONS)
    assert {label for label, _ in CASES} == set(OPERATIONS)


def test_server_log_has_no_unhandled_errors(fuzz_world: FuzzWorld) -> None:
    """Runs after the operations (same module): nothing reached the catch-all handler."""
    log = Path(fuzz_world.server.log_path).read_text()
    assert "unhandled_error" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
