"""Terms, privacy and refund policy pages.

Their words are the operator's: Markdown files in the data directory's `pages/` folder
(`terms.md`, `privacy.md`, `refunds.md`), read when a page is shown, with placeholders shipped
in `kswifi/web/policies/` until the operator writes their own. Markdown only: raw HTML in a
file is shown as text, so a page can never carry a script.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markdown_it import MarkdownIt
from markupsafe import Markup

from kswifi.web.templating import render

router = APIRouter(include_in_schema=False)

PAGES = {"terms": "Terms of service", "privacy": "Privacy policy", "refunds": "Refund policy"}
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def page_text(data_dir: Path, name: str) -> str:
    """The operator's Markdown for a page, else the shipped placeholder."""
    own = data_dir / "pages" / f"{name}.md"
    if own.is_file():
        return own.read_text(encoding="utf-8")
    return resources.files("kswifi.web.policies").joinpath(f"{name}.md").read_text("utf-8")


def _page(name: str) -> Callable[[Request], Awaitable[Response]]:
    async def show(request: Request) -> Response:
        settings = request.app.state.ctx.settings
        html = Markup(_markdown.render(page_text(settings.data_dir, name)))  # noqa: S704 (escaped)
        return render(request, "policy.html", {"title": PAGES[name], "body": html})

    show.__name__ = f"{name}_page"
    return show


for _name in PAGES:
    router.add_api_route(f"/{_name}", _page(_name), methods=["GET"], response_class=HTMLResponse)
