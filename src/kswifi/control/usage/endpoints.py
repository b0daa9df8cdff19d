"""HTTP endpoints of the usage domain."""

from fastapi import APIRouter

router = APIRouter()
