"""The datanet service's endpoints, relative to where they are mounted (``/v1/datanets``).

::

    GET  /                                      hosted datanets
    GET  /{ref}                                 one datanet: id, schema, visibility, owner
    GET  /{ref}/nonces/{address}                a contributor's next nonce
    POST /{ref}/contributions                   records + signed contribution (+ grant)
    POST /{ref}/commitments                     commit before reveal       (call: commit)
    POST /{ref}/reviews                         a signed review
    GET  /{ref}/reviews[?record_hash=]          signed reviews (reasons need a grant if private)
    GET  /{ref}/flags/{hash}                    near-duplicate flags       (grant if private)
    GET  /{ref}/reputation/{address}            records, rejected, score
    GET  /{ref}/contributors | /validators      records per contributor; validators
    POST /{ref}/validators                      an owner-signed validator entry
    POST /{ref}/access-requests                 file one                   (call: request-access)
    GET  /{ref}/access-requests                 every request              (call: access-requests)
    GET  /{ref}/access-requests/{id}            one request          (call: request:{id})
    POST /{ref}/access-requests/{id}/approve    an owner-signed grant
    POST /{ref}/access-requests/{id}/deny       (call: deny:{id});  .../revoke (call: revoke:{id})
    GET  /{ref}/access-requests/{id}/grant      the grantee's grant        (call: grant:{id})
    GET  /{ref}/records[?after=&limit=]         a page of records          (grant if private)
    GET  /{ref}/records/{hash}                  one record                 (grant if private)
    GET  /{ref}/snapshots                       ids, roots, counts
    POST /{ref}/snapshots                       freeze a new one           (call: snapshot)
    GET  /{ref}/snapshots/{id}                  root, count, manifest and its hash
    GET  /{ref}/snapshots/{id}/leaves           (hash, contributor) leaves (grant if private)
    GET  /{ref}/snapshots/{id}/proofs/{hash}    a record's Merkle proof    (grant if private)

``{ref}`` is a datanet's id or name. Grants travel in ``X-OpenLedger-Grant``, signed calls
(:class:`~openledger.data.remote_signing.SignedCall`, the person's say-so for what has no
signed message of its own) in ``X-OpenLedger-Call``; everything else is verified from the
signatures in the body. Refusals are 4xx with a code naming the reason (``errors.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from openledger.data import AccessGrant, Datanet, SignedContribution
from openledger.data.remote_signing import (
    SignedCall,
    SignedReview,
    check_call,
    commitments_digest,
)
from openledger.data.signing import HexAddress, HexSignature
from openledger.data.wire import (
    CALL_HEADER,
    GRANT_HEADER,
    receipt_json,
    request_json,
    review_json,
    snapshot_json,
    stored_json,
)
from openledger.exceptions import AccessDeniedError, ConfigError, PayloadTooLargeError
from openledger.gateway.datanets.service import DatanetService, HostedDatanet, parse_model

__all__ = ["add_datanet_routes"]

T = TypeVar("T")


class ContributionBody(BaseModel):
    """``POST /{ref}/contributions``: records and their contributor's signature."""

    model_config = ConfigDict(extra="forbid")
    records: list[Any] = Field(min_length=1)
    signed: SignedContribution


class CommitmentsBody(BaseModel):
    """``POST /{ref}/commitments``: the commitments, signed for by a ``commit`` call."""

    model_config = ConfigDict(extra="forbid")
    commitments: list[str] = Field(min_length=1, max_length=100_000)
    ttl_seconds: int = Field(default=3600, gt=0)


class ValidatorBody(BaseModel):
    """``POST /{ref}/validators``: a validator and the owner's signature over it."""

    model_config = ConfigDict(extra="forbid")
    validator: HexAddress
    signature: HexSignature


class PurposeBody(BaseModel):
    """``POST /{ref}/access-requests``: what the data is for (the call's detail)."""

    model_config = ConfigDict(extra="forbid")
    purpose: str


def add_datanet_routes(app: FastAPI, service: DatanetService) -> None:
    """Add every datanet endpoint to ``app`` (paths relative to its mount point)."""
    _add_info_routes(app, service)
    _add_contribution_routes(app, service)
    _add_governance_routes(app, service)
    _add_access_routes(app, service)
    _add_read_routes(app, service)
    _add_snapshot_routes(app, service)


async def _on(hosted: HostedDatanet, work: Callable[[Datanet], T]) -> T:
    return await run_in_threadpool(hosted.run, work)


async def _body(request: Request, model: type[T], service: DatanetService) -> T:
    limit = service.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"the request body is over {limit} bytes")
    read = bytearray()
    async for chunk in request.stream():  # NOTE: a body without a length is cut at the limit
        read += chunk
        if len(read) > limit:
            raise PayloadTooLargeError(f"the request body is over {limit} bytes")
    parsed = parse_model(model, bytes(read), "the request body")
    if parsed is None:
        raise ConfigError("the request needs a JSON body")
    return parsed


def _grant(request: Request) -> AccessGrant | None:
    return parse_model(AccessGrant, request.headers.get(GRANT_HEADER), f"the {GRANT_HEADER} header")


def _call(request: Request) -> SignedCall | None:
    return parse_model(SignedCall, request.headers.get(CALL_HEADER), f"the {CALL_HEADER} header")


def _reader(hosted: HostedDatanet, request: Request) -> AccessGrant | None:
    return hosted.reader(_grant(request), _call(request))


def _add_info_routes(app: FastAPI, service: DatanetService) -> None:
    @app.get("/")
    async def listing() -> dict[str, Any]:
        found = [await run_in_threadpool(h.info) for h in service.hosted.values()]
        return {"object": "list", "data": found}

    @app.get("/{ref}")
    async def info(ref: str) -> dict[str, Any]:
        return await run_in_threadpool(service.find(ref).info)

    @app.get("/{ref}/nonces/{address}")
    async def nonce(ref: str, address: str) -> dict[str, Any]:
        found = await _on(service.find(ref), lambda d: d.next_nonce(address))
        return {"address": address, "next_nonce": found}


def _add_contribution_routes(app: FastAPI, service: DatanetService) -> None:
    @app.post("/{ref}/contributions")
    async def contribute(ref: str, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        body = await _body(request, ContributionBody, service)
        grant = _grant(request)

        def work(dn: Datanet) -> list[Any]:
            return dn.contribute(body.records, signed=body.signed, grant=grant)

        receipts = await _on(hosted, work)
        return {"object": "list", "data": [receipt_json(r) for r in receipts]}

    @app.post("/{ref}/commitments")
    async def commit(ref: str, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        body = await _body(request, CommitmentsBody, service)
        call = _call(request)
        digest = commitments_digest(body.commitments)
        signer = check_call(
            call,
            datanet_id=hosted.datanet.id,
            action="commit",
            signers={call.signer if call else ""},
            detail=digest,
        )

        def work(dn: Datanet) -> int:
            return dn.commit(body.commitments, contributor=signer, ttl_seconds=body.ttl_seconds)

        return {"stored": await _on(hosted, work)}


def _add_governance_routes(app: FastAPI, service: DatanetService) -> None:
    @app.post("/{ref}/reviews", status_code=201)
    async def review(ref: str, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        signed = await _body(request, SignedReview, service)
        await _on(hosted, lambda d: d.add_review(signed))
        return {"record_hash": signed.record_hash, "accept": signed.accept}

    @app.get("/{ref}/reviews")
    async def reviews(ref: str, request: Request, record_hash: str | None = None) -> Any:
        hosted = service.find(ref)
        grant = _reader(hosted, request)
        found = await _on(hosted, lambda d: d.reviews(record_hash, grant=grant))
        return {"object": "list", "data": [review_json(r) for r in found]}

    @app.get("/{ref}/flags/{record_hash}")
    async def flags(ref: str, record_hash: str, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        grant = _reader(hosted, request)

        def work(dn: Datanet) -> list[tuple[str, str]]:
            dn.require_read(grant)
            return dn.flags(record_hash)

        found = await _on(hosted, work)
        return {"object": "list", "data": [{"kind": k, "detail": d} for k, d in found]}

    @app.get("/{ref}/reputation/{address}")
    async def reputation(ref: str, address: str) -> dict[str, Any]:
        found = await _on(service.find(ref), lambda d: d.reputation(address))
        return {
            "contributor": found.contributor,
            "records": found.records,
            "rejected": found.rejected,
            "score": found.score,
        }

    @app.get("/{ref}/contributors")
    async def contributors(ref: str) -> dict[str, Any]:
        return {"data": await _on(service.find(ref), lambda d: d.contributors())}

    @app.get("/{ref}/validators")
    async def validators(ref: str) -> dict[str, Any]:
        return {"data": await _on(service.find(ref), lambda d: d.validators())}

    @app.post("/{ref}/validators", status_code=201)
    async def add_validator(ref: str, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        body = await _body(request, ValidatorBody, service)
        await _on(hosted, lambda d: d.add_validator(body.validator, signature=body.signature))
        return {"validator": body.validator}


def _add_access_routes(app: FastAPI, service: DatanetService) -> None:
    base = "/{ref}/access-requests"

    @app.post(base, status_code=201)
    async def file(ref: str, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        body = await _body(request, PurposeBody, service)
        call = _call(request)
        if call is None:
            raise AccessDeniedError("an access request needs the requester's signed call")
        found = await _on(hosted, lambda d: d.request_access(call, body.purpose))
        return request_json(found)

    @app.get(base)
    async def listing(ref: str, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        _owner_call(hosted, request, "access-requests")
        found = await _on(hosted, lambda d: d.access_requests())
        return {"object": "list", "data": [request_json(r) for r in found]}

    @app.get(base + "/{request_id}")
    async def one(ref: str, request_id: int, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        found = await _on(hosted, lambda d: d.access_request(request_id))
        signers = {found.requester, *([hosted.datanet.owner] if hosted.datanet.owner else [])}
        check_call(
            _call(request),
            datanet_id=hosted.datanet.id,
            action=f"request:{request_id}",
            signers=signers,
        )
        return request_json(found)

    @app.post(base + "/{request_id}/approve")
    async def approve(ref: str, request_id: int, request: Request) -> Any:
        hosted = service.find(ref)
        grant = await _body(request, AccessGrant, service)
        stored = await _on(hosted, lambda d: d.approve(request_id, grant=grant))
        return JSONResponse(json.loads(stored.model_dump_json()))

    @app.post(base + "/{request_id}/deny")
    async def deny(ref: str, request_id: int, request: Request) -> dict[str, Any]:
        hosted, call = service.find(ref), _call(request)
        await _on(hosted, lambda d: d.deny(request_id, owner=_required(call)))
        return {"id": request_id, "status": "denied"}

    @app.post(base + "/{request_id}/revoke")
    async def revoke(ref: str, request_id: int, request: Request) -> dict[str, Any]:
        hosted, call = service.find(ref), _call(request)
        await _on(hosted, lambda d: d.revoke(request_id, owner=_required(call)))
        return {"id": request_id, "status": "revoked"}

    @app.get(base + "/{request_id}/grant")
    async def grant(ref: str, request_id: int, request: Request) -> Any:
        hosted, call = service.find(ref), _call(request)
        found = await _on(hosted, lambda d: d.grant_for(request_id, requester=_required(call)))
        return JSONResponse(json.loads(found.model_dump_json()))


def _required(call: SignedCall | None) -> SignedCall:
    if call is None:
        raise AccessDeniedError(f"this needs a signed call in the {CALL_HEADER} header")
    return call


def _owner_call(hosted: HostedDatanet, request: Request, action: str) -> SignedCall:
    owner, call = hosted.datanet.owner, _call(request)
    signers = {owner} if owner else set()
    check_call(call, datanet_id=hosted.datanet.id, action=action, signers=signers)
    return _required(call)


def _add_read_routes(app: FastAPI, service: DatanetService) -> None:
    @app.get("/{ref}/records")
    async def records(
        ref: str,
        request: Request,
        after: int = 0,
        limit: int = 1000,
        include_rejected: bool = False,
    ) -> dict[str, Any]:
        hosted = service.find(ref)
        grant = _reader(hosted, request)

        def work(dn: Datanet) -> tuple[list[Any], int]:
            return dn.records_page(
                after=after, limit=limit, grant=grant, include_rejected=include_rejected
            )

        page, cursor = await _on(hosted, work)
        return {"object": "list", "data": [stored_json(r) for r in page], "next": cursor}

    @app.get("/{ref}/records/{record_hash}")
    async def record(ref: str, record_hash: str, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        grant = _reader(hosted, request)
        return stored_json(await _on(hosted, lambda d: d.get(record_hash, grant=grant)))


def _add_snapshot_routes(app: FastAPI, service: DatanetService) -> None:
    base = "/{ref}/snapshots"

    @app.get(base)
    async def listing(ref: str) -> dict[str, Any]:
        def work(dn: Datanet) -> list[dict[str, Any]]:
            snaps = [dn.snapshot_at(i) for i in dn.snapshots()]
            return [{k: v for k, v in snapshot_json(s).items() if k != "manifest"} for s in snaps]

        return {"object": "list", "data": await _on(service.find(ref), work)}

    @app.post(base, status_code=201)
    async def freeze(ref: str, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        service.spend_call(_owner_call(hosted, request, "snapshot"))  # NOTE: once per signed call
        return snapshot_json(await _on(hosted, lambda d: d.snapshot()))

    @app.get(base + "/{snapshot_id}")
    async def one(ref: str, snapshot_id: int) -> dict[str, Any]:
        return snapshot_json(await _on(service.find(ref), lambda d: d.snapshot_at(snapshot_id)))

    @app.get(base + "/{snapshot_id}/leaves")
    async def leaves(ref: str, snapshot_id: int, request: Request) -> dict[str, Any]:
        hosted = service.find(ref)
        grant = _reader(hosted, request)

        def work(dn: Datanet) -> list[list[str]]:
            dn.require_read(grant)
            snap = dn.snapshot_at(snapshot_id)
            return [list(snap.leaf(h)) for h in snap.record_hashes()]

        return {"object": "list", "data": await _on(hosted, work)}

    @app.get(base + "/{snapshot_id}/proofs/{record_hash}")
    async def proof(ref: str, snapshot_id: int, record_hash: str, request: Request) -> Any:
        hosted = service.find(ref)
        grant = _reader(hosted, request)

        def work(dn: Datanet) -> dict[str, Any]:
            dn.require_read(grant)
            snap = dn.snapshot_at(snapshot_id)
            digest, contributor = snap.leaf(record_hash)
            return {
                "record_hash": digest,
                "contributor": contributor,
                "proof": snap.proof(digest),
                "root": snap.root,
            }

        return await _on(hosted, work)
