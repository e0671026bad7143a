"""Typed FastAPI dependencies (swap them with `app.dependency_overrides` in tests)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.dataplane import Gateway
from gateway.settings import Settings


def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.gateway.settings
    return settings


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
