"""Words of the product note that the pages show verbatim (tier lines, setup steps)."""

from __future__ import annotations

from dataclasses import dataclass

SETUP_TITLE = "KSWiFi Connect Setup"
GENERATE_BUTTON = "Generate Connect Code"
PROFILE_READY = "Your KSWiFi Connect profile is ready"
SCAN_LINE = "Scan to activate secure internet access"
STATUS_ACTIVE = "Connect Profile Active"

SETUP_INSTRUCTIONS = (
    "1. Scan this QR code with your device camera",
    "2. Tap 'Add' when prompted to install profile",
    "3. Enable 'KSWiFi Connect' in your device settings",
    "4. Enjoy secure global internet access!",
)

# What an open page says when one of its devices changed on another page or phone ({name}: the
# device's name). "code": a page showing the device's code; "list": My devices.
DEVICE_NOTICES = {
    "code": {
        "rotated": "“{name}” got new keys elsewhere: this code no longer works. "
        "Show its code again from My devices.",
        "removed": "“{name}” was removed elsewhere: this code no longer works.",
    },
    "list": {
        "rotated": "“{name}” got new keys elsewhere: the profile installed on it "
        "stopped working until you set it up again with “Show code again”.",
        "removed": "“{name}” was removed elsewhere. Its profile no longer works.",
    },
}


@dataclass(frozen=True)
class WorksLine:
    """One "what works" line of a tier; `partial` marks the note's ⚠ lines."""

    title: str
    detail: str
    partial: bool = False


# "Speed Based on Session Tier" of the product note, per default plan.
TIER_LINES: dict[str, tuple[WorksLine, ...]] = {
    "basic": (
        WorksLine("Social media browsing", "Instagram, TikTok"),
        WorksLine("Messaging", "WhatsApp, Telegram"),
        WorksLine("Music streaming", "Spotify, Apple Music"),
        WorksLine("Video streaming", "480p quality", partial=True),
    ),
    "premium": (
        WorksLine("HD video streaming", "720p YouTube, Netflix"),
        WorksLine("Video calls", "Clear FaceTime, Zoom"),
        WorksLine("Fast web browsing", "Multiple tabs"),
        WorksLine("App downloads", "Install apps quickly"),
    ),
    "ultra": (
        WorksLine("4K streaming", "Ultra HD videos"),
        WorksLine("Gaming", "Online games with low latency"),
        WorksLine("Large downloads", "Software, movies"),
        WorksLine("Multiple devices", "Share connection"),
    ),
}


def tier_for(code: str, speed_mbps: int) -> str:
    """The default tier a plan reads like: by its code, else by its speed."""
    if code in TIER_LINES:
        return code
    if speed_mbps < 25:
        return "basic"
    if speed_mbps < 50:
        return "premium"
    return "ultra"


def works_lines(code: str, speed_mbps: int) -> tuple[WorksLine, ...]:
    return TIER_LINES[tier_for(code, speed_mbps)]
