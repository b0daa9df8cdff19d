"""HTTP endpoints of the plans domain."""

from fastapi import APIRouter

router = APIRouter()
