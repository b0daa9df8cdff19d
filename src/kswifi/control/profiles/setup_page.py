"""The phone's setup page behind a setup link (what the Connect QR Code opens in a phone's
camera): small, self-contained HTML, one way to install per platform (pure rendering).

User-facing words only (see ARCHITECTURE.md's vocabulary): a "KSWiFi Connect Profile" giving
"Secure Internet Access". WireGuard is named only as the app a phone installs to use it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Literal

from kswifi.control.profiles.schemas import SETUP_INSTRUCTIONS

Platform = Literal["iphone", "mac", "android", "other"]
TITLE = "KSWiFi Connect Setup"
APP_NAME = "KSWiFi Connect"
WIREGUARD_ANDROID_URL = "https://play.google.com/store/apps/details?id=com.wireguard.android"
WIREGUARD_IOS_URL = "https://apps.apple.com/app/wireguard/id1441195209"
WIREGUARD_MAC_URL = "https://apps.apple.com/app/wireguard/id1451685025"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
TUNNEL_NAME = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")
"""What Android's WireGuard app accepts as a tunnel name (the file name, without `.conf`)."""

_STYLE = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f4f6fb;color:#14213d}
header{background:#14213d;color:#fff;padding:.75rem 1.25rem}
header a{color:#fff;text-decoration:none;font-weight:700}
main{max-width:28rem;margin:0 auto;padding:1.5rem 1.25rem 3rem}
h1{font-size:1.5rem;margin:.5rem 0 1rem}h2{font-size:1.1rem}
.card{background:#fff;border-radius:14px;padding:1.25rem;box-shadow:0 2px 10px #0001;
margin-bottom:1rem}
.button{display:block;text-align:center;background:#1d4ed8;color:#fff;text-decoration:none;
padding:.9rem 1rem;border-radius:10px;font-weight:600;margin:.75rem 0}
.button.secondary{background:#e8edfb;color:#1d4ed8}
ol{padding-left:1.25rem}li{margin:.5rem 0}
.steps{padding-left:0;list-style:none}
.note{color:#52607a;font-size:.9rem}
figure{margin:0;text-align:center}figure img{width:100%;max-width:260px;height:auto}
footer{max-width:28rem;margin:0 auto;padding:0 1.25rem 2rem;color:#52607a;font-size:.9rem}
"""


def detect_platform(user_agent: str | None) -> Platform:
    """iPhone (and iPod), Android, a Mac (which an iPad's Safari also claims to be: the page
    then offers both) or anything else."""
    agent = user_agent or ""
    if re.search(r"Android", agent, re.IGNORECASE):
        return "android"
    if re.search(r"iPhone|iPad|iPod", agent):
        return "iphone"
    if re.search(r"Macintosh|Mac OS X", agent):
        return "mac"
    return "other"


def tunnel_filename() -> str:
    """A `.conf` name that stays a valid tunnel name when downloaded again (a browser renames
    a second `KSWiFi-Connect.conf` to `KSWiFi-Connect (1).conf`, which Android refuses): a
    fresh short one per download."""
    return f"kswifi-{secrets.token_hex(2)}.conf"


@dataclass(frozen=True)
class Support:
    """Where a person gets help (`KSWIFI_SUPPORT_URL`, `KSWIFI_SUPPORT_EMAIL`)."""

    url: str = ""
    email: str = ""

    def footer(self) -> str:
        links = []
        if self.url:
            links.append(f'<a href="{escape(self.url)}">Help</a>')
        if self.email:
            links.append(f'<a href="mailto:{escape(self.email)}">{escape(self.email)}</a>')
        return f"<footer>Need help? {' · '.join(links)}</footer>" if links else ""


def _document(body: str, app_url: str, support: Support) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{escape(TITLE)}</title><style>{_STYLE}</style></head>"
        f'<body><header><a href="{escape(app_url)}">&larr; {escape(APP_NAME)}</a></header>'
        f"<main>{body}</main>{support.footer()}</body></html>\n"
    )


def _instructions() -> str:
    items = "".join(f"<li>{escape(step)}</li>" for step in SETUP_INSTRUCTIONS)
    return f'<section class="card"><h2>How it works</h2><ol class="steps">{items}</ol></section>'


def _button(url: str, text: str, *, secondary: bool = False, download: str | None = None) -> str:
    kind = "button secondary" if secondary else "button"
    attribute = f' download="{escape(download)}"' if download else ""
    return f'<a class="{kind}" href="{escape(url)}"{attribute}>{escape(text)}</a>'


def _apple(mobileconfig_url: str, app_store: str, device: str) -> str:
    return (
        "<ol>"
        f"<li>No WireGuard app on this {device} yet? "
        f'<a href="{escape(app_store)}">Get it from the App Store</a> (free).</li>'
        f"<li>{_button(mobileconfig_url, 'Install the KSWiFi Connect Profile')}</li>"
        "<li>Open <b>Settings</b>, tap <b>Profile Downloaded</b> and choose <b>Install</b>.</li>"
        f"<li>Switch on <b>{escape(APP_NAME)}</b> in the WireGuard app or Settings.</li>"
        "</ol>"
    )


def _config_code(config_qr: str) -> str:
    return (
        f'<figure><img src="{escape(config_qr)}" alt="Code for the WireGuard app" '
        'width="260" height="260"><figcaption class="note">Scan it from inside the WireGuard '
        "app: tap <b>+</b>, then <b>Scan from QR code</b>.</figcaption></figure>"
    )


def _android(config_url: str, config_qr: str) -> str:
    filename = tunnel_filename()
    download = _button(
        config_url, "Download the KSWiFi Connect Profile", secondary=True, download=filename
    )
    return (
        "<ol>"
        f"<li>{_button(WIREGUARD_ANDROID_URL, 'Get the WireGuard app')}</li>"
        f"<li>{download}"
        "In the WireGuard app, tap <b>+</b>, then <b>Import from file or archive</b>, and "
        f"pick <b>{escape(filename)}</b>.</li>"
        f"<li>Or, on another screen, scan this code from inside the app:{_config_code(config_qr)}"
        "</li></ol>"
    )


def _other(config_url: str, config_qr: str) -> str:
    filename = tunnel_filename()
    return (
        "<p>Install the WireGuard app for your computer from wireguard.com, then import the "
        "profile:</p>"
        f"{_button(config_url, 'Download the KSWiFi Connect Profile', download=filename)}"
        f"{_config_code(config_qr)}"
    )


def render_setup_page(
    *,
    platform: Platform,
    config_url: str,
    mobileconfig_url: str,
    mac_mobileconfig_url: str,
    config_qr: str,
    app_url: str,
    expires_at: datetime,
    support: Support | None = None,
) -> str:
    """The page offering the profile the way this device installs it."""
    if platform == "iphone":
        offer = "<h2>On this iPhone</h2>" + _apple(mobileconfig_url, WIREGUARD_IOS_URL, "iPhone")
    elif platform == "mac":
        # An iPad's Safari says "Macintosh" too: both ways, the iPad's first.
        offer = (
            "<h2>On an iPad</h2>"
            + _apple(mobileconfig_url, WIREGUARD_IOS_URL, "iPad")
            + "<h2>On a Mac</h2>"
            + _apple(mac_mobileconfig_url, WIREGUARD_MAC_URL, "Mac")
        )
    elif platform == "android":
        offer = "<h2>On this Android phone</h2>" + _android(config_url, config_qr)
    else:
        offer = (
            "<h2>On a computer</h2>"
            + _other(config_url, config_qr)
            + "<h2>On an iPhone or iPad</h2>"
            + _apple(mobileconfig_url, WIREGUARD_IOS_URL, "device")
        )
    expiry = escape(expires_at.strftime("%H:%M UTC"))
    return _document(
        f"<h1>{escape(TITLE)}</h1>"
        "<p>Your KSWiFi Connect Profile is ready: install it once for Secure Internet Access. "
        "Every session you buy later uses it by itself.</p>"
        f'<section class="card">{offer}'
        f'<p class="note">These downloads work until {expiry}.</p></section>' + _instructions(),
        app_url,
        support or Support(),
    )


def render_setup_error(message: str, app_url: str, support: Support | None = None) -> str:
    """The page for a setup link that was used, expired or is unknown."""
    return _document(
        f"<h1>{escape(TITLE)}</h1>"
        f'<section class="card"><p>{escape(message)}</p>'
        f'<p class="note">Open <a href="{escape(app_url)}">the KSWiFi app</a> and tap '
        "<b>Generate Connect Code</b> to get a new setup link.</p></section>",
        app_url,
        support or Support(),
    )
