"""The Datanets tab's API: accounts, schemas, datanets, uploads, records and snapshots."""

from __future__ import annotations

from itertools import islice
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from openledger.exceptions import AccessDeniedError, ConfigError
from openledger.studio.access import grant_of
from openledger.studio.state import StudioState
from openledger.studio.uploads import read_capped, rows_of
from openledger.studio.workspace import check_name

__all__ = ["router"]

router = APIRouter(prefix="/api")


class NewAccount(BaseModel):
    """Body of ``POST /api/accounts``."""

    name: str


class NewDatanet(BaseModel):
    """Body of ``POST /api/datanets``."""

    name: str
    schema_id: str
    owner: str | None = None
    private: bool = False
    """Reads need a grant the owner approved (access requests)."""


def _state(request: Request) -> StudioState:
    state: StudioState = request.app.state.studio
    return state


@router.get("/accounts")
def list_accounts(request: Request) -> list[dict[str, str]]:
    """Local accounts: name and address."""
    accounts = _state(request).workspace.accounts()
    return [{"name": name, "address": a.address} for name, a in accounts.items()]


@router.post("/accounts")
def create_account(body: NewAccount, request: Request) -> dict[str, str]:
    """Create a local account."""
    account = _state(request).workspace.create_account(body.name)
    return {"name": body.name, "address": account.address}


@router.get("/schemas")
def list_schemas() -> list[dict[str, Any]]:
    """The built-in record schemas with their fields and descriptions."""
    from openledger.data.schemas import BUILTIN_SCHEMAS

    return [
        {
            "id": schema_id,
            "name": schema.__name__,
            "doc": (schema.__doc__ or "").strip().splitlines()[0],
            "fields": list(schema.model_fields),
        }
        for schema_id, schema in BUILTIN_SCHEMAS.items()
    ]


@router.get("/datanets")
def list_datanets(request: Request) -> list[dict[str, Any]]:
    """Every datanet with its schema, record count and snapshots."""
    workspace = _state(request).workspace
    found = []
    for name in workspace.datanet_names():
        with workspace.open_datanet(name) as datanet:
            snapshots = [_snapshot_row(datanet.snapshot_at(i)) for i in datanet.snapshots()]
            found.append(
                {
                    "name": name,
                    "id": datanet.id,
                    "schema": datanet.schema.schema_id,
                    "records": len(datanet),
                    "snapshots": snapshots,
                    "visibility": datanet.visibility,
                    "owner": datanet.owner,
                }
            )
    return found


@router.post("/datanets")
def create_datanet(body: NewDatanet, request: Request) -> dict[str, Any]:
    """Create an empty datanet, public or private (a private one needs an owner)."""
    from openledger.data import Datanet
    from openledger.data.schemas import BUILTIN_SCHEMAS

    workspace = _state(request).workspace
    name = check_name(body.name, "datanet")
    schema = BUILTIN_SCHEMAS.get(body.schema_id)
    if schema is None:
        raise ConfigError(f"unknown schema {body.schema_id!r}; pick one of {list(BUILTIN_SCHEMAS)}")
    owner = workspace.account(body.owner) if body.owner else None
    if body.private and owner is None:
        raise ConfigError("a private datanet needs an owner to approve access: pick one in Sign as")
    visibility: Literal["public", "private"] = "private" if body.private else "public"
    folder = workspace.datanets_dir / name
    with workspace.lock:
        if folder.exists():
            raise ConfigError(f"a datanet called {name!r} exists already")
        Datanet.create(folder, name=name, schema=schema, owner=owner, visibility=visibility).close()
    return {"name": name, "schema": schema.schema_id, "visibility": visibility}


@router.post("/datanets/{name}/upload")
async def upload(name: str, filename: str, account: str, request: Request) -> dict[str, Any]:
    """Contribute a JSONL or CSV file (the raw request body) signed by a local account.

    All rows are stored in one signed contribution, or none is.
    """
    state = _state(request)
    contributor = state.workspace.account(account)
    body = await read_capped(request.stream(), state.config.max_upload_bytes, filename)
    rows = rows_of(filename, body)

    def contribute() -> list[Any]:
        with state.workspace.lock, state.workspace.open_datanet(name) as datanet:
            # NOTE: the owner writes to its private datanet without a grant; others need one
            grant = None
            if datanet.owner != contributor.address:
                grant = grant_of(datanet, contributor, account)
            receipts: list[Any] = datanet.contribute(rows, contributor=contributor, grant=grant)
            return receipts

    receipts = await run_in_threadpool(contribute)
    return {"stored": len(receipts), "rows": len(rows), "contributor": contributor.address}


@router.get("/datanets/{name}/records")
def list_records(
    name: str, request: Request, limit: int = 100, reader: str | None = None
) -> dict[str, Any]:
    """The first ``limit`` records with status and contributor (rejected ones too); a
    private datanet is read with the grant of the local account ``reader``."""
    workspace = _state(request).workspace
    names = workspace.names_by_address()
    with workspace.open_datanet(name) as datanet:
        grant = None
        if datanet.visibility == "private":
            if not reader:
                raise AccessDeniedError(
                    f"datanet {name!r} is private: pick an account with approved access in "
                    "Sign as to read it"
                )
            grant = grant_of(datanet, workspace.account(reader), reader)
        found = datanet.records(include_rejected=True, grant=grant)
        stored = list(islice(found, max(0, min(limit, 1000))))
        total = len(datanet)
    rows = [
        {
            "record_hash": s.record_hash,
            "status": s.status,
            "contributor": s.contributor,
            "contributor_name": names.get(s.contributor, ""),
            "fields": s.record.model_dump(mode="json", exclude_none=True),
        }
        for s in stored
    ]
    return {"total": total, "records": rows}


class ReviewBody(BaseModel):
    """Body of ``POST /api/datanets/{name}/review``: a validator's signed decision."""

    record_hash: str
    accept: bool
    reason: str = ""
    account: str


class ValidatorBody(BaseModel):
    """Body of ``POST /api/datanets/{name}/validators``: the owner lets an account review."""

    validator: str
    owner: str


@router.post("/datanets/{name}/review")
def review_record(name: str, body: ReviewBody, request: Request) -> dict[str, Any]:
    """Accept or reject a record, signed by a local account that may review (the owner or
    a validator); a rejected record leaves future snapshots."""
    workspace = _state(request).workspace
    validator = workspace.account(body.account)
    reason = body.reason.strip() or ("accepted" if body.accept else "rejected")
    with workspace.lock, workspace.open_datanet(name) as datanet:
        datanet.review(body.record_hash, accept=body.accept, reason=reason, validator=validator)
    # NOTE: what a stored review makes the record (read back, it would need a grant when private)
    status = "accepted" if body.accept else "rejected"
    return {"record_hash": body.record_hash, "status": status, "validator": validator.address}


@router.post("/datanets/{name}/validators")
def add_validator(name: str, body: ValidatorBody, request: Request) -> dict[str, Any]:
    """Let a local account review the datanet's records (signed by its owner)."""
    workspace = _state(request).workspace
    validator, owner = workspace.account(body.validator), workspace.account(body.owner)
    with workspace.lock, workspace.open_datanet(name) as datanet:
        datanet.add_validator(validator, owner=owner)
        validators = datanet.validators()
    return {"validators": validators}


@router.post("/datanets/{name}/snapshot")
def take_snapshot(name: str, request: Request) -> dict[str, Any]:
    """Snapshot the datanet's accepted records; returns its id and Merkle root."""
    workspace = _state(request).workspace
    with workspace.lock, workspace.open_datanet(name) as datanet:
        return _snapshot_row(datanet.snapshot())


def _snapshot_row(snapshot: Any) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "root": snapshot.root,
        "count": snapshot.count,
        "contributors": snapshot.contributors,
        "created_at": snapshot.created_at,
    }


class AccessRequestBody(BaseModel):
    """Body of ``POST /api/datanets/{name}/access``: a local account asks to read."""

    account: str
    purpose: str


class AccessDecisionBody(BaseModel):
    """Body of the owner's approve, deny and revoke: the owner's account (and a grant's
    lifetime in days, for approve)."""

    owner: str
    days: float = Field(default=30, gt=0, le=3650)


def _request_row(found: Any, names: dict[str, str]) -> dict[str, Any]:
    return {
        "id": found.id,
        "requester": found.requester,
        "name": names.get(found.requester, ""),
        "purpose": found.purpose,
        "status": found.status,
    }


@router.get("/datanets/{name}/access")
def list_access_requests(name: str, request: Request) -> dict[str, Any]:
    """A datanet's visibility, owner and access requests (oldest first)."""
    workspace = _state(request).workspace
    names = workspace.names_by_address()
    with workspace.open_datanet(name) as datanet:
        found = datanet.access_requests() if datanet.visibility == "private" else []
        return {
            "visibility": datanet.visibility,
            "owner": datanet.owner,
            "owner_name": names.get(datanet.owner or "", ""),
            "requests": [_request_row(r, names) for r in found],
        }


@router.post("/datanets/{name}/access")
def request_access(name: str, body: AccessRequestBody, request: Request) -> dict[str, Any]:
    """File a request, as a local account, to read a private datanet."""
    workspace = _state(request).workspace
    account = workspace.account(body.account)
    with workspace.lock, workspace.open_datanet(name) as datanet:
        found = datanet.request_access(account, body.purpose)
    return _request_row(found, workspace.names_by_address())


@router.post("/datanets/{name}/access/{request_id}/{decision}")
def decide_access(
    name: str, request_id: int, decision: str, body: AccessDecisionBody, request: Request
) -> dict[str, Any]:
    """The owner approves (signs a grant valid ``days``), denies or revokes a request."""
    workspace = _state(request).workspace
    if decision not in ("approve", "deny", "revoke"):
        raise ConfigError(f"unknown decision {decision!r}: approve, deny or revoke")
    owner = workspace.account(body.owner)
    expires_at = None
    with workspace.lock, workspace.open_datanet(name) as datanet:
        if decision == "approve":
            ttl = max(1, round(body.days * 86_400))
            expires_at = datanet.approve(request_id, owner=owner, ttl_seconds=ttl).expires_at
        elif decision == "deny":
            datanet.deny(request_id, owner=owner)
        else:
            datanet.revoke(request_id, owner=owner)
        found = datanet.access_request(request_id)
    return {**_request_row(found, workspace.names_by_address()), "expires_at": expires_at}
