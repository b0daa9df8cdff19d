"""Terms, privacy and refund policy: placeholders until the operator writes their own
Markdown in the data directory; linked from every page's footer and from checkout; raw HTML
in the operator's file is never served as HTML."""

from __future__ import annotations

import httpx
import pytest

from kswifi.control.deps import AppContext
from tests.web.conftest import web_signup


@pytest.mark.parametrize(
    ("path", "heading"),
    [("/terms", "Terms of service"), ("/privacy", "Privacy policy"), ("/refunds", "Refund policy")],
)
async def test_placeholders_until_the_operator_writes_their_own(
    client: httpx.AsyncClient, ctx: AppContext, path: str, heading: str
) -> None:
    page = await client.get(path)
    assert page.status_code == 200
    assert f"<h1>{heading}</h1>" in page.text
    assert "placeholder" in page.text
    own = ctx.settings.data_dir / "pages"
    own.mkdir(parents=True, exist_ok=True)
    (own / f"{path.strip('/')}.md").write_text(
        "# Our own words\n\nRefunds within **14 days**.\n\n<script>alert(1)</script>\n"
    )
    page = await client.get(path)
    assert "<h1>Our own words</h1>" in page.text
    assert "<strong>14 days</strong>" in page.text
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "placeholder" not in page.text


async def test_the_footer_and_checkout_link_them(client: httpx.AsyncClient) -> None:
    home = await client.get("/")
    for path in ("/terms", "/privacy", "/refunds"):
        assert f'href="{path}"' in home.text
    await web_signup(client)
    checkout = await client.get("/checkout/premium")
    assert 'accept the <a href="/terms">terms of service</a>' in checkout.text
    assert 'href="/refunds"' in checkout.text
