#!/usr/bin/env python3
"""Check a deployment topology (deploy/topology.example.toml) and print the steps that build it.

    python deploy/scripts/topology.py deploy/topology.example.toml

Checks: region codes, continents and DNS servers as the control plane would accept them;
gateway names unique, regions known, endpoints valid `HOST:PORT`; control-plane replicas on
distinct ports. Prints: the region calls for the operator API, one `kswifi admin gateways add`
per gateway, each gateway's environment file, the nginx upstream block. Exit status 1 with one
line per problem when the file is wrong.
"""

from __future__ import annotations

import ipaddress
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

CONTINENTS = {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}
SEEDED_REGIONS = {"us-east", "eu-west", "ap-southeast"}
CODE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def check(topology: dict[str, Any]) -> list[str]:
    """Every problem in the topology, one line each (empty when it is sound)."""
    problems: list[str] = []
    regions = topology.get("regions", [])
    codes = [region.get("code", "") for region in regions]
    for region in regions:
        code = region.get("code", "")
        if not CODE.match(code):
            problems.append(f"region {code!r}: code must be lowercase letters, digits and '-'")
        if region.get("continent") not in CONTINENTS:
            problems.append(f"region {code}: continent must be one of {sorted(CONTINENTS)}")
        if not region.get("name"):
            problems.append(f"region {code}: name is missing")
        dns = region.get("dns", [])
        if not 1 <= len(dns) <= 4:
            problems.append(f"region {code}: give 1 to 4 DNS servers")
        for server in dns:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                problems.append(f"region {code}: DNS server {server!r} is not an IP address")
    if len(set(codes)) != len(codes):
        problems.append("region codes must be unique")

    gateways = topology.get("gateways", [])
    names = [gateway.get("name", "") for gateway in gateways]
    if len(set(names)) != len(names):
        problems.append("gateway names must be unique")
    endpoints = [gateway.get("endpoint", "") for gateway in gateways]
    if len(set(endpoints)) != len(endpoints):
        problems.append("gateway endpoints must be unique")
    for gateway in gateways:
        name = gateway.get("name", "")
        if not NAME.match(name):
            problems.append(f"gateway {name!r}: 1-64 letters, digits, '.', '_' or '-'")
        if gateway.get("region") not in codes:
            problems.append(f"gateway {name}: region {gateway.get('region')!r} is not defined")
        match = HOST_PORT.match(gateway.get("endpoint", ""))
        if match is None or not 1 <= int(match.group(2)) <= 65535:
            problems.append(f"gateway {name}: endpoint must be HOST:PORT")
        if int(gateway.get("capacity", 1)) < 1:
            problems.append(f"gateway {name}: capacity must be at least 1")
        if not gateway.get("wan_interface"):
            problems.append(f"gateway {name}: wan_interface is missing")
    for code in codes:
        if code not in {gateway.get("region") for gateway in gateways}:
            problems.append(f"region {code}: no gateway (it would always be offline)")

    control = topology.get("control", {})
    if control.get("region") not in codes:
        problems.append(f"control: region {control.get('region')!r} is not defined")
    if not str(control.get("public_url", "")).startswith("https://"):
        problems.append("control: public_url must be https://")
    if "{region}" not in str(control.get("probe_url", "{region}")):
        problems.append("control: probe_url must contain {region}")
    for host in control.get("hosts", []):
        ports = host.get("replicas", [])
        if not ports or len(set(ports)) != len(ports):
            problems.append(f"control host {host.get('name')}: replicas need distinct ports")
    if not control.get("hosts"):
        problems.append("control: at least one host")
    return problems


def plan(topology: dict[str, Any]) -> str:
    """The steps, as an operator would type them."""
    control = topology["control"]
    lines = ["# 1. Regions (operator API; the three launch regions are seeded)"]
    for region in topology["regions"]:
        body = {
            "code": region["code"],
            "name": region["name"],
            "location": region.get("location", ""),
            "continent": region["continent"],
            "dns_servers": region["dns"],
        }
        if region["code"] in SEEDED_REGIONS:
            lines.append(
                f"# {region['code']}: seeded; PATCH /api/admin/regions/{region['code']}"
                " to change it"
            )
        else:
            lines.append(f"POST {control['public_url']}/api/admin/regions {body}")
    lines.append("\n# 2. Gateways (on a control-plane host; each prints its token last)")
    for gateway in topology["gateways"]:
        lines.append(
            f"kswifi admin gateways add --name {gateway['name']} --region {gateway['region']}"
            f" --endpoint {gateway['endpoint']} --capacity {gateway.get('capacity', 10000)}"
        )
    lines.append("\n# 3. /etc/kswifi/gateway.env on each gateway host")
    for gateway in topology["gateways"]:
        lines += [
            f"## {gateway['name']}",
            f"KSWIFI_GATEWAY_CONTROL_URL={control['public_url']}",
            f"KSWIFI_GATEWAY_TOKEN=<token of {gateway['name']}>",
            f"KSWIFI_GATEWAY_ENDPOINT={gateway['endpoint']}",
            f"KSWIFI_GATEWAY_WAN_INTERFACE={gateway['wan_interface']}",
            f"KSWIFI_GATEWAY_LISTEN_PORT={gateway['endpoint'].rsplit(':', 1)[1]}",
        ]
    lines.append(
        "\n# 4. Each control-plane host: its replicas, and nginx (deploy/nginx/kswifi-control.conf)"
        " in front of them; DNS or a load balancer spreads connect.example.net over the hosts"
    )
    for host in control["hosts"]:
        units = " ".join(f"kswifi-control@{port}" for port in host["replicas"])
        servers = " ".join(f"server 127.0.0.1:{port};" for port in host["replicas"])
        lines.append(f"{host['name']}: systemctl enable --now {units}")
        lines.append(f"{host['name']}: upstream kswifi_control {{ {servers} keepalive 64; }}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} TOPOLOGY.toml", file=sys.stderr)
        return 2
    try:
        topology = tomllib.loads(Path(argv[1]).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"{argv[1]}: {exc}", file=sys.stderr)
        return 1
    problems = check(topology)
    if problems:
        for problem in problems:
            print(f"{argv[1]}: {problem}", file=sys.stderr)
        return 1
    print(plan(topology))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
