"""Hosted datanets: contribute, review and request access over HTTP.

A service hosts datanets (SQLite folders or PostgreSQL stores) and trusts signatures, not
connections: contributions, reviews, validator entries and grants arrive signed (EIP-712)
and are verified before anything is stored; what has no message of its own (filing an
access request, fetching a grant, the owner's denials, revocations and snapshots) comes
with a signed call. Clients are :class:`openledger.data.RemoteDatanet`. The guide is
docs/datanet-service.md.
"""

from __future__ import annotations

from openledger.gateway.datanets.app import (
    MOUNT_PATH,
    create_datanet_app,
    datanet_api,
    mount_datanets,
    run_datanet_server,
)
from openledger.gateway.datanets.service import DatanetService, HostedDatanet

__all__ = [
    "MOUNT_PATH",
    "DatanetService",
    "HostedDatanet",
    "create_datanet_app",
    "datanet_api",
    "mount_datanets",
    "run_datanet_server",
]
