"""HTTP endpoints of the sessions domain."""

from fastapi import APIRouter

router = APIRouter()
