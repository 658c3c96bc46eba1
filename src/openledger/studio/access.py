"""Reading a private datanet in the Studio: the grant a local account holds for it.

A private datanet's records are read with an owner-signed grant (``Datanet.approve``). The
Studio holds every local account's key, so it reads a private datanet as the account the
page names: with the grant of that account's latest approved access request.
"""

from __future__ import annotations

from typing import Any

from openledger.exceptions import AccessDeniedError

__all__ = ["grant_of", "reader_grant"]


def grant_of(datanet: Any, account: Any, name: str) -> Any:
    """The grant ``account`` (called ``name``) reads ``datanet`` with; None if it is public.

    Raises:
        AccessDeniedError: The datanet is private and the account has no approved request.
    """
    if datanet.visibility != "private":
        return None
    approved = [r for r in datanet.access_requests("approved") if r.requester == account.address]
    if not approved:
        raise AccessDeniedError(
            f"datanet {datanet.name!r} is private and {name} has no approved access request: "
            "request access as that account (Access requests), and have the owner approve it"
        )
    grant = datanet.grant_for(approved[-1].id, requester=account)
    return grant.bind(account) if datanet.grants == "bound" else grant


def reader_grant(workspace: Any, datanet: Any, reader: str | None, doing: str, field: str) -> Any:
    """The grant the local account called ``reader`` reads ``datanet`` with (None if it is
    public); ``doing`` and ``field`` word the refusal when no account was picked.

    Raises:
        AccessDeniedError: The datanet is private and no account was picked, or the one
            picked has no approved access request.
        DataNotFoundError: No local account is called ``reader``.
    """
    if datanet.visibility != "private":
        return None
    if not reader:
        raise AccessDeniedError(
            f"datanet {datanet.name!r} is private: pick the local account that {doing} "
            f"({field}), one its owner approved"
        )
    return grant_of(datanet, workspace.account(reader), reader)
