"""End-to-end harness: control plane (Unix socket) + gateway agent + phones in namespaces.

    phone namespaces ──bridge 203.0.113.0/24── gateway ns (agent) ──WAN── "internet" ns
    (wireguard-go, config                       wireguard-go, nft,  192.0.2.1  the provider's
     decoded from the QR code)                  tc, `kswifi gateway run`       router .254;
                                                                     HTTP + iperf3 behind it
                                                                     on 198.51.100.2

The control plane runs as `kswifi serve --uds PATH` in the host namespace; the agent reaches
it through the socket file, so no test traffic leaves the namespaces or loopback.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from kswifi.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from tests.agent.netlab import (
    SERVER_V4,
    UAPI_DIR,
    Lab,
    gateway_wan,
    import_wg_quick,
    provider_network,
)

# The gateway's WireGuard: wireguard-go (these machines have no module), or the kernel's
# (`make test-kernel` runs the suite in a VM whose kernel has it): KSWIFI_E2E_WIREGUARD.
WIREGUARD_MODE = os.environ.get("KSWIFI_E2E_WIREGUARD", "userspace")
# Waits stretch by this factor where everything runs slower (an emulated VM: 5-10x).
TIME_FACTOR = float(os.environ.get("KSWIFI_E2E_TIME_FACTOR", "1"))
KSWIFI = str(Path(sys.executable).with_name("kswifi"))
WEB = Path(__file__).with_name("web.py")
SERVER = SERVER_V4
GATEWAY_WAN = "192.0.2.1"
GATEWAY_WAN_V6 = "2001:db8:1::1"
GATEWAY_LAN = "203.0.113.1"
GATEWAY_PORT = 51820
REGION = "us-east"
PASSWORD = "correct-horse-battery"


def decode_qr(data_uri: str) -> str:
    """The wg-quick config inside a `data:image/png;base64,` QR code (real decoder)."""
    import zxingcpp
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(data_uri[len(prefix) :])))
    results = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(results) == 1, "exactly one QR code"
    return str(results[0].text)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    timeout *= TIME_FACTOR
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Person:
    email: str
    headers: dict[str, str]


@dataclass
class Phone:
    """A phone namespace running the config its QR code held."""

    ns: str
    ifname: str
    config: str
    session_id: str
    connect_id: str
    owner: Person


@dataclass
class E2ESystem:
    lab: Lab
    data_dir: Path
    gw: str = ""
    inet: str = ""
    wan: str = ""
    bridge: str = ""
    socket: Path = field(default_factory=Path)
    control: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    gateway_token: str = ""
    admin: Person | None = None
    phones: list[Phone] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    agent_env: dict[str, str] = field(default_factory=dict)
    """Settings for the agent only (`KSWIFI_GATEWAY_*`)."""
    agent_uid: int | None = None
    """Run the agent as this unprivileged user with CAP_NET_ADMIN alone (None: as root)."""

    # -- processes -----------------------------------------------------------------------

    def kswifi(self, *args: str) -> str:
        done = subprocess.run(
            [KSWIFI, *args], capture_output=True, text=True, env=self.env, timeout=60, check=False
        )
        assert done.returncode == 0, f"kswifi {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout

    def start_control_plane(self) -> None:
        self.socket.unlink(missing_ok=True)
        log = (self.data_dir / "control.log").open("ab")
        self.control = subprocess.Popen(
            [KSWIFI, "serve", "--uds", str(self.socket)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self.lab.processes.append(self.control)
        wait_for(self._control_answers, 30, "the control plane to answer")
        if self.agent_uid is not None:  # the agent's user may connect to the socket
            self.socket.chmod(0o666)

    def _control_answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return self.api().get("/api/plans").status_code == 200
        except httpx.HTTPError:
            return False

    def stop_control_plane(self) -> None:
        assert self.control is not None
        self.control.send_signal(signal.SIGKILL)
        self.control.wait(10)
        self.control = None

    def token_file(self, name: str, token: str) -> Path:
        """The gateway token in a file only its owner reads (never on a command line)."""
        path = self.data_dir / f"{name}.token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        return path

    def start_agent(self) -> None:
        log = (self.data_dir / "agent.log").open("ab")
        state_dir = self.data_dir / "gateway"
        token_file = self.token_file("gateway", self.gateway_token)
        argv = [
            KSWIFI, "gateway", "run",
            "--control-url", f"unix:{self.socket}",
            "--token-file", str(token_file),
            "--endpoint", f"{GATEWAY_LAN}:{GATEWAY_PORT}",
            "--wan-interface", self.wan,
            "--interface", self.wg,
            "--ifb-interface", self.lab.ifname("ifb"),
            "--state-dir", str(state_dir),
        ]  # fmt: skip
        if WIREGUARD_MODE == "userspace":
            argv.append("--userspace-only")
        if self.agent_uid is not None:
            argv = self._unprivileged(argv, state_dir, token_file)
        self.agent = self.lab.popen(
            self.gw, argv, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **self.agent_env}
        )
        wait_for(self._agent_applied, 30, "the agent to configure its interface")
        links = json.loads(self.lab.sh(self.gw, ["ip", "-d", "-j", "link", "show", "dev", self.wg]))
        kind = links[0].get("linkinfo", {}).get("info_kind")
        expected = "wireguard" if WIREGUARD_MODE == "kernel" else "tun"
        assert kind == expected, f"the gateway's interface is {kind!r}, not {expected!r}"

    def _unprivileged(self, argv: list[str], state_dir: Path, token_file: Path) -> list[str]:
        """`argv` as the shipped systemd unit runs the agent: its own user, CAP_NET_ADMIN and
        nothing else, its own state directory and /run/wireguard (RuntimeDirectory=).

        In the agent's own mount namespace only, /dev/net/tun gets the mode udev gives it on a
        standard host (0666; this machine has no udev and leaves it 0600)."""
        uid = self.agent_uid
        assert uid is not None
        root = self.data_dir / "agent-root"
        runtime = root / "wireguard"
        root.mkdir(mode=0o755, exist_ok=True)
        for path in (state_dir, runtime):
            path.mkdir(mode=0o700, exist_ok=True)
            os.chown(path, uid, uid)
        os.chown(token_file, uid, uid)
        self.data_dir.chmod(0o711)  # the user reaches its files and the control socket
        # The host's `wg` (the tests' own checks) finds the agent's UAPI socket through a link.
        UAPI_DIR.mkdir(parents=True, exist_ok=True)
        link = UAPI_DIR / f"{self.wg}.sock"
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to(runtime / f"{self.wg}.sock")
        drop = (
            '[ -c "$0/tun" ] || mknod -m 0666 "$0/tun" c 10 200;'
            ' mount --bind "$0/tun" /dev/net/tun'
            ' && mount --bind "$0/wireguard" /var/run/wireguard'
            f" && exec setpriv --reuid {uid} --regid {uid} --clear-groups"
            " --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin"
            ' --bounding-set=-all,+net_admin -- "$@"'
        )
        isolate = ["unshare", "--mount", "--propagation", "private", "sh", "-c", drop]
        return [*isolate, str(root), *argv]

    def _agent_applied(self) -> bool:
        try:
            out = self.lab.sh(self.gw, ["wg", "show", self.wg, "listen-port"])
        except RuntimeError:
            return False
        return out.strip() == str(GATEWAY_PORT)

    def kill_agent(self) -> None:
        assert self.agent is not None
        self.agent.send_signal(signal.SIGKILL)
        self.agent.wait(10)
        self.agent = None

    @property
    def wg(self) -> str:
        return self.lab.ifname("wg")

    # -- API -----------------------------------------------------------------------------

    def api(self) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        # Gateway-protocol requests carry the version as an agent's do.
        return httpx.Client(
            transport=transport,
            base_url="http://kswifi",
            timeout=30,
            headers={PROTOCOL_HEADER: str(PROTOCOL_VERSION)},
        )

    def call(self, method: str, path: str, person: Person | None = None, **kw: Any) -> Any:
        with self.api() as client:
            headers = person.headers if person else {}
            response = client.request(method, path, headers=headers, **kw)
        assert response.status_code < 300, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json() if response.content else None

    def person(self, admin: bool = False) -> Person:
        email = f"e2e-{secrets.token_hex(4)}@example.com"
        if admin:
            self.kswifi(
                "admin", "users", "create", "--email", email, "--password", PASSWORD, "--admin"
            )
        else:
            self.call("POST", "/api/auth/register", json={"email": email, "password": PASSWORD})
        tokens = self.call("POST", "/api/auth/login", json={"email": email, "password": PASSWORD})
        return Person(email, {"Authorization": f"Bearer {tokens['access_token']}"})

    def buy(self, plan_code: str, person: Person) -> str:
        voucher = self.kswifi("admin", "vouchers", "create", "--plan", plan_code).split()[-1]
        bought = self.call(
            "POST",
            "/api/purchases",
            person,
            json={"plan_code": plan_code, "payment_method": "voucher", "voucher_code": voucher},
        )
        return str(bought["session_id"])

    def generate(
        self, session_id: str, person: Person, device: str = "phone", *, rotate: bool = False
    ) -> dict[str, Any]:
        body = self.call(
            "POST",
            "/api/connect/generate-profile",
            person,
            json={
                "session_id": session_id,
                "region": REGION,
                "device_name": device,
                "rotate": rotate,
            },
        )
        assert body["success"] is True
        return dict(body)

    def session(self, session_id: str, person: Person) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/sessions/{session_id}", person))

    # -- phones --------------------------------------------------------------------------

    def connect_phone(self, plan_code: str) -> Phone:
        """Buy, generate a profile, decode its QR code and bring the phone up with it."""
        person = self.person()
        session_id = self.buy(plan_code, person)
        body = self.generate(session_id, person)
        return self.phone_from(body, person)

    def phone_from(self, body: dict[str, Any], person: Person) -> Phone:
        config = decode_qr(body["config_qr"])
        index = len(self.phones)
        ns = self.lab.netns(f"ph{index}")
        host_side = self.lab.ifname(f"b{index}")
        phone_side = self.lab.ifname(f"p{index}")
        self.lab.sh(
            None,
            [
                "ip",
                "link",
                "add",
                host_side,
                "netns",
                self.gw,
                "type",
                "veth",
                "peer",
                phone_side,
                "netns",
                ns,
            ],
        )
        self.lab.sh(self.gw, ["ip", "link", "set", host_side, "master", self.bridge, "up"])
        self.lab.sh(ns, ["ip", "addr", "add", f"203.0.113.{10 + index}/24", "dev", phone_side])
        self.lab.sh(ns, ["ip", "link", "set", phone_side, "up"])
        ifname = self.lab.ifname(f"w{index}")
        import_wg_quick(self.lab, ns, ifname, config)
        phone = Phone(ns, ifname, config, body["session_id"], body["connect_id"], person)
        self.phones.append(phone)
        return phone

    def fetch(
        self, phone: Phone, size: int, idle: float = 3.0, timeout: float = 120
    ) -> dict[str, Any]:
        out = self.lab.sh(
            phone.ns,
            [sys.executable, str(WEB), "get", f"http://{SERVER}/bytes/{size}", str(idle)],
            timeout=timeout,
        )
        return dict(json.loads(out))

    def fetch_background(
        self, phone: Phone, size: int, idle: float = 5.0
    ) -> subprocess.Popen[bytes]:
        return self.lab.popen(
            phone.ns,
            [sys.executable, str(WEB), "get", f"http://{SERVER}/bytes/{size}", str(idle)],
            stdout=subprocess.PIPE,
        )

    def crossed_bytes(self) -> int:
        """IP bytes exchanged between the Internet host and the gateway (counted in `inet`)."""
        return self._counter_bytes(self.inet, "crossed")

    def _counter_bytes(self, namespace: str, name: str) -> int:
        out = self.lab.sh(namespace, ["nft", "-j", "list", "counter", "inet", "e2e", name])
        for entry in json.loads(out)["nftables"]:
            if "counter" in entry:
                return int(entry["counter"]["bytes"])
        raise AssertionError(f"no counter {name}")

    def reset_crossed(self) -> None:
        self.lab.sh(self.inet, ["nft", "reset", "counter", "inet", "e2e", "crossed"])
        self.lab.sh(self.gw, ["nft", "reset", "counter", "inet", "e2e", "served"])

    def served_bytes(self) -> int:
        """IP bytes the gateway forwarded between tunnel and Internet (after its quotas)."""
        return self._counter_bytes(self.gw, "served")

    def settle_usage(self, phone: Phone, timeout: float = 10) -> int:
        """used_bytes once it has stopped changing for 2.5 s (reports come every second)."""
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            used = int(self.session(phone.session_id, phone.owner)["used_bytes"])
            if used != last:
                last, stable_since = used, time.monotonic()
            elif time.monotonic() - stable_since > 2.5:
                return used
            time.sleep(0.25)
        return last

    def set_expiry(self, session_id: str, expires_at: datetime) -> None:
        """Time travel for the expiry scenario: the database is the control plane's own."""
        with sqlite3.connect(self.data_dir / "kswifi.db") as db:
            db.execute(
                "UPDATE data_sessions SET expires_at = ? WHERE id = ?",
                (expires_at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" "), session_id),
            )
            db.execute("UPDATE gateways SET revision = revision + 1")


def build_system(
    lab: Lab,
    data_dir: Path,
    agent_env: dict[str, str] | None = None,
    agent_uid: int | None = None,
    control_env: dict[str, str] | None = None,
) -> E2ESystem:
    system = E2ESystem(
        lab=lab,
        data_dir=data_dir,
        socket=data_dir / "control.sock",
        agent_env=agent_env or {},
        agent_uid=agent_uid,
    )
    system.env = {
        **os.environ,
        "KSWIFI_DATA_DIR": str(data_dir),
        "KSWIFI_DATABASE_URL": "",
        "KSWIFI_LONGPOLL_SECONDS": "2",
        **(control_env or {}),
    }
    for name in list(system.env):
        if name.startswith("KSWIFI_GATEWAY_"):
            del system.env[name]
    system.gw = lab.netns("gw")
    system.inet = lab.netns("inet")
    system.wan = lab.ifname("wan")
    net = lab.ifname("net")
    lab.link(system.gw, system.wan, system.inet, net)
    provider_network(lab, system.inet, net)
    gateway_wan(lab, system.gw, system.wan, GATEWAY_WAN, GATEWAY_WAN_V6)
    system.bridge = lab.ifname("br")
    lab.sh(system.gw, ["ip", "link", "add", system.bridge, "type", "bridge"])
    lab.sh(system.gw, ["ip", "addr", "add", f"{GATEWAY_LAN}/24", "dev", system.bridge])
    lab.sh(system.gw, ["ip", "link", "set", system.bridge, "up"])
    accounting = f"""table inet e2e {{
  counter crossed {{ }}
  chain input {{
    type filter hook input priority 0;
    ip saddr {GATEWAY_WAN} counter name "crossed"
  }}
  chain output {{
    type filter hook output priority 0;
    ip daddr {GATEWAY_WAN} counter name "crossed"
  }}
}}
"""
    lab.sh(system.inet, ["nft", "-f", "-"], input_text=accounting)
    # What the gateway really forwarded between its tunnel and the Internet: a chain after the
    # agent's own forward chain (a higher priority number), so packets its quotas dropped
    # never reach it (downloads: their pass from the download loop to the tunnel). `crossed`
    # also counts those (they crossed the Internet link first).
    wg, wan = json.dumps(system.wg), json.dumps(system.wan)
    served = f"""table inet e2e {{
  counter served {{ }}
  chain forward {{
    type filter hook forward priority filter + 10;
    iifname {wg} oifname {wan} counter name "served"
    oifname {wg} counter name "served"
  }}
}}
"""
    lab.sh(system.gw, ["nft", "-f", "-"], input_text=served)
    web = lab.popen(system.inet, [sys.executable, str(WEB), "server", SERVER, "80"], stdout=-1)
    assert web.stdout is not None and web.stdout.readline().strip() == b"ready"
    lab.popen(system.inet, ["iperf3", "-s", "-B", SERVER], stdout=subprocess.DEVNULL)

    system.kswifi("db", "upgrade")
    system.kswifi(
        "admin",
        "plans",
        "create",
        "--code",
        "e2equota",
        "--name",
        "E2E 20 MB",
        "--data-mb",
        "20",
        "--speed-mbps",
        "1000",
        "--validity-days",
        "1",
        "--price-cents",
        "0",
    )
    out = system.kswifi(
        "admin",
        "gateways",
        "add",
        "--name",
        f"e2e-{lab.prefix}",
        "--region",
        REGION,
        "--endpoint",
        f"{GATEWAY_LAN}:{GATEWAY_PORT}",
    )
    system.gateway_token = out.strip().splitlines()[-1].strip()
    system.start_control_plane()
    system.admin = system.person(admin=True)
    system.start_agent()
    return system
