"""The person's receipts: a list of paid purchases and a printable page for each."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from kswifi.control.deps import DbSession
from kswifi.control.purchases import receipts
from kswifi.web.deps import PageNotFound, RequiredUser
from kswifi.web.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/receipts", response_class=HTMLResponse)
async def receipts_page(request: Request, user: RequiredUser, db: DbSession) -> Response:
    found = await receipts.receipts_for_user(db, user.id)
    return render(request, "receipts.html", {"nav": "account", "receipts": found})


@router.get("/receipts/{purchase_id}", response_class=HTMLResponse)
async def receipt_page(
    request: Request, purchase_id: str, user: RequiredUser, db: DbSession
) -> Response:
    receipt = await receipts.receipt_for_user(db, user.id, purchase_id[:32])
    if receipt is None:
        raise PageNotFound()
    return render(
        request, "receipt.html", {"nav": "account", "receipt": receipt, "email": user.email}
    )
