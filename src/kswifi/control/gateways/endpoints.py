"""HTTP endpoints of the gateways domain."""

from fastapi import APIRouter

router = APIRouter()
