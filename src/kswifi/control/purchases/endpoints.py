"""HTTP endpoints of the purchases domain."""

from fastapi import APIRouter

router = APIRouter()
