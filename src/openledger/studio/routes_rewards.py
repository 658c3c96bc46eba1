"""The Rewards tab's API: metered answers, settle an epoch, claimable amounts, claims."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from openledger.exceptions import ConfigError
from openledger.studio.state import StudioState

__all__ = ["router", "tokens_to_wei"]

router = APIRouter(prefix="/api")


class SettleBody(BaseModel):
    """Body of ``POST /api/rewards/settle``: the pool in tokens (decimal text)."""

    pool: str


class ClaimBody(BaseModel):
    """Body of ``POST /api/rewards/claim``."""

    epoch_id: int
    address: str


def tokens_to_wei(text: str) -> int:
    """Parse a positive token amount with up to 18 decimals into wei.

    Raises:
        ConfigError: Not a positive number, or more than 18 decimals.
    """
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ConfigError(f"the pool must be a number of tokens, got {text!r}") from None
    wei = amount * 10**18
    if not amount.is_finite() or amount <= 0 or wei != wei.to_integral_value():
        raise ConfigError(f"the pool must be a positive amount with <= 18 decimals, got {text!r}")
    return int(wei)


def _state(request: Request) -> StudioState:
    state: StudioState = request.app.state.studio
    return state


@router.get("/rewards")
def rewards_overview(request: Request) -> dict[str, Any]:
    """Answers metered and waiting for an epoch, each posted epoch's payees, and the local
    accounts' token balances."""
    state = _state(request)
    names = state.workspace.names_by_address()
    epochs = state.rewards.rows(names)
    accounts = {name: address for address, name in names.items()}
    balances = state.rewards.balances(accounts)
    return {**state.rewards.counts(), "epochs": epochs, "balances": balances}


@router.post("/rewards/settle")
def settle_epoch(body: SettleBody, request: Request) -> dict[str, Any]:
    """Pay the attributed answers not settled yet in one epoch on the chain."""
    state = _state(request)
    done = state.rewards.settle(tokens_to_wei(body.pool))
    names = state.workspace.names_by_address()
    return {
        "epoch_id": done.epoch_id,
        "root": done.root,
        "total": str(done.total),
        "settled": len(done.settled),
        "nothing_owed": len(done.nothing_owed),
        "held": done.held,
        "bond_penalties": [
            {"address": a, "name": names.get(a, ""), "amount": str(w)}
            for a, w in sorted(done.bond_penalties.items())
        ],
    }


@router.post("/rewards/claim")
def claim(body: ClaimBody, request: Request) -> dict[str, Any]:
    """Claim a payee's amount (sent by the payee if it is a local account)."""
    state = _state(request)
    names = state.workspace.names_by_address()
    name = names.get(body.address)
    account = state.workspace.account(name) if name else None
    balance = state.rewards.claim(body.epoch_id, body.address, account)
    return {"address": body.address, "balance": str(balance)}
