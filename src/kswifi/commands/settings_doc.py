"""The settings tables of the README, made from the settings classes themselves."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from kswifi.agent.config import GatewaySettings
from kswifi.control.config import Settings

START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
SPECIAL_DEFAULTS = {
    "KSWIFI_SECRET_KEY": "generated, kept in `$KSWIFI_DATA_DIR/secret_key`",
    "KSWIFI_DATA_DIR": "`./var`",
    "KSWIFI_DATABASE_URL": "SQLite file in the data dir",
}


def _rows(settings_class: type[BaseSettings]) -> list[str]:
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    rows = []
    for name, field in settings_class.model_fields.items():
        env = f"{prefix}{name}".upper()
        if env in SPECIAL_DEFAULTS:
            default = SPECIAL_DEFAULTS[env]
        elif field.is_required():
            default = "required"
        elif isinstance(field.default, SecretStr) or field.default in ("", None):
            default = "empty"
        else:
            default = f"`{field.default}`"
        rows.append(f"| `{env}` | {default} | {field.description or ''} |")
    return rows


def settings_table() -> str:
    lines = [START, "| name | default | meaning |", "| --- | --- | --- |"]
    lines += _rows(Settings)
    lines += ["", "Gateway agent (`kswifi gateway run`; each option also has a flag):", ""]
    lines += ["| name | default | meaning |", "| --- | --- | --- |"]
    lines += _rows(GatewaySettings)
    lines.append(END)
    return "\n".join(lines)


def replace_table(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return head + settings_table() + tail
