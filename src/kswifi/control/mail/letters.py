"""Letters in the product's words: one plain-text and one HTML template per kind.

`templates/<kind>.txt` holds `{% block subject %}` and `{% block body %}`; `<kind>.html`
extends `_layout.html` (autoescaped). Links are absolute, built from `KSWIFI_PUBLIC_URL`;
the footer names the support page and address when they are set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from kswifi.control.config import Settings

APP_NAME = "KSWiFi Connect"

_env = Environment(
    loader=PackageLoader("kswifi.control.mail", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Letter:
    kind: str
    subject: str
    text: str
    html: str


def link(settings: Settings, path: str) -> str:
    """An absolute link to `path` on the public site."""
    return settings.public_url.rstrip("/") + "/" + path.lstrip("/")


def compose(settings: Settings, kind: str, **values: Any) -> Letter:
    context = {
        "app_name": APP_NAME,
        "home_url": link(settings, "/"),
        "support_url": settings.support_url,
        "support_email": settings.support_email,
        **values,
    }
    text_template = _env.get_template(f"{kind}.txt")
    text_context = text_template.new_context(context)
    subject = "".join(text_template.blocks["subject"](text_context)).strip()
    body = "".join(text_template.blocks["body"](text_context)).strip() + "\n"
    footer = _env.get_template("_footer.txt").render(context).strip()
    html = _env.get_template(f"{kind}.html").render({**context, "subject": subject})
    return Letter(kind=kind, subject=subject, text=f"{body}\n-- \n{footer}\n", html=html)
