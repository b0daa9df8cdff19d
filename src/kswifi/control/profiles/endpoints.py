"""HTTP endpoints of the profiles domain."""

from fastapi import APIRouter

router = APIRouter()
