"""The phone's setup page behind a setup link: small, self-contained HTML (pure rendering).

User-facing words only (see ARCHITECTURE.md's vocabulary): a "KSWiFi Connect Profile" giving
"Secure Internet Access". WireGuard is named only as the app Android users install.
"""

from __future__ import annotations

import re
from datetime import datetime
from html import escape
from typing import Literal

from kswifi.control.profiles.schemas import SETUP_INSTRUCTIONS

Platform = Literal["apple", "android", "other"]
TITLE = "KSWiFi Connect Setup"
WIREGUARD_ANDROID_URL = "https://play.google.com/store/apps/details?id=com.wireguard.android"
WIREGUARD_IOS_URL = "https://apps.apple.com/app/wireguard/id1441195209"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)

_STYLE = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f4f6fb;color:#14213d}
main{max-width:28rem;margin:0 auto;padding:1.5rem 1.25rem 3rem}
h1{font-size:1.5rem;margin:.5rem 0 1rem}
.card{background:#fff;border-radius:14px;padding:1.25rem;box-shadow:0 2px 10px #0001;
margin-bottom:1rem}
.button{display:block;text-align:center;background:#1d4ed8;color:#fff;text-decoration:none;
padding:.9rem 1rem;border-radius:10px;font-weight:600;margin:.75rem 0}
.button.secondary{background:#e8edfb;color:#1d4ed8}
ol{padding-left:0;list-style:none}li{margin:.5rem 0}
.note{color:#52607a;font-size:.9rem}
"""


def detect_platform(user_agent: str | None) -> Platform:
    """iPhone/iPad (and Macs, which iPads also claim to be) install the Apple profile."""
    agent = user_agent or ""
    if re.search(r"Android", agent, re.IGNORECASE):
        return "android"
    if re.search(r"iPhone|iPad|iPod|Macintosh|Mac OS X", agent):
        return "apple"
    return "other"


def _document(body: str) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{escape(TITLE)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _instructions() -> str:
    items = "".join(f"<li>{escape(step)}</li>" for step in SETUP_INSTRUCTIONS)
    return f'<section class="card"><h2>How it works</h2><ol>{items}</ol></section>'


def render_setup_page(
    *, platform: Platform, config_url: str, mobileconfig_url: str, expires_at: datetime
) -> str:
    """The page offering the profile the way this phone installs it."""
    apple = (
        f'<a class="button" href="{escape(mobileconfig_url)}">'
        "Install the KSWiFi Connect Profile</a>"
        '<p class="note">Then open Settings, tap <b>Profile Downloaded</b> and choose '
        "<b>Install</b>.</p>"
    )
    android = (
        f'<a class="button" href="{escape(WIREGUARD_ANDROID_URL)}">'
        "Get the WireGuard app</a>"
        f'<a class="button secondary" href="{escape(config_url)}" download="KSWiFi-Connect.conf">'
        "Download the KSWiFi Connect Profile</a>"
        '<p class="note">In the WireGuard app, tap <b>+</b>, then <b>Import from file</b> and '
        "pick KSWiFi-Connect.conf.</p>"
    )
    if platform == "apple":
        offer = apple
    elif platform == "android":
        offer = android
    else:
        offer = (
            "<h2>iPhone, iPad or Mac</h2>"
            + apple
            + "<h2>Android and other devices</h2>"
            + android.replace('class="button"', 'class="button secondary"', 1)
        )
    expiry = escape(expires_at.strftime("%H:%M UTC"))
    return _document(
        f"<h1>{escape(TITLE)}</h1>"
        "<p>Scan to activate secure internet access: your KSWiFi Connect Profile is ready.</p>"
        f'<section class="card">{offer}'
        f'<p class="note">These downloads work until {expiry}.</p></section>' + _instructions()
    )


def render_setup_error(message: str) -> str:
    """The page for a setup link that was used, expired or is unknown."""
    return _document(
        f"<h1>{escape(TITLE)}</h1>"
        f'<section class="card"><p>{escape(message)}</p>'
        '<p class="note">Open the KSWiFi app and tap <b>Generate Connect Code</b> '
        "to get a new setup link.</p></section>"
    )
