"""A datanet hosted by a datanet service, used like a local one.

::

    dn = ol.data.RemoteDatanet("https://data.example.org/v1/datanets/medqa")
    receipts = dn.contribute(rows, contributor=alice)      # signed here, verified there
    snap = dn.latest_snapshot()
    proof = snap.proof(receipts[0].record_hash)            # checked here against snap.root

Everything that needs a key is signed on this machine: contributions, reviews, validator
entries, grants, and the signed calls that say who asks for what. The service verifies
and stores; it never holds a key. What it sends back is checked where it can be: a proof
against the snapshot's root, a snapshot's leaves against its root, a manifest against its
hash. Refusals come back as the exceptions the datanet raised (:mod:`.wire`).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import httpx

from openledger.crypto import Account, to_hex
from openledger.data import wire
from openledger.data.access import AccessGrant
from openledger.data.canonical import record_hash
from openledger.data.datanet_exports import ExportMethods
from openledger.data.ingest import PreparedBatch, prepare_batch
from openledger.data.receipts import ContributionReceipt, StoredRecord
from openledger.data.remote_governance import RemoteGovernanceMethods, hex32
from openledger.data.remote_signing import (
    SignedCall,
    commitments_digest,
    sign_call,
)
from openledger.data.remote_snapshot import RemoteSnapshot
from openledger.data.schemas import Record, resolve_schema, schema_hash
from openledger.data.signing import (
    SignedContribution,
    as_account_address,
    sign_contribution,
)
from openledger.exceptions import (
    AccessDeniedError,
    ConfigError,
    NonceError,
    SchemaError,
    StoreError,
)
from openledger.types import Address, Hash32

__all__ = ["RemoteDatanet"]

_NONCE_RETRIES = 3
_PAGE = 1000


class RemoteDatanet(RemoteGovernanceMethods, ExportMethods):
    """A hosted datanet, with the methods of :class:`~openledger.data.Datanet` that make
    sense over a network (those that need a key take the account that signs).

    Args:
        url: The datanet's address on a service, ``http(s)://host[:port]/v1/datanets/<id
            or name>``.
        schema: The record class, when the datanet's is not a built-in one; it must hash
            to the datanet's schema hash.
        allow_modules: Or modules a user schema may be imported from by its stored path.
        timeout: Seconds to wait for the service.
        transport: An ``httpx`` transport to send requests through (tests, proxies).
        headers: Extra headers for every request (e.g. a reverse proxy's credentials).

    Raises:
        ConfigError: ``url`` names no datanet.
        StoreError: The service cannot be reached.
        SchemaError: The schema cannot be found, or does not match the datanet's.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: type[Record] | None = None,
        allow_modules: Sequence[str] = (),
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if "/v1/datanets/" not in url or not url.rstrip("/").rpartition("/v1/datanets/")[2]:
            raise ConfigError(
                f"url must name a datanet on a service: http(s)://host/v1/datanets/<id or name>,"
                f" got {url!r}"
            )
        self.url = self.path = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url + "/", timeout=timeout, transport=transport, headers=headers
        )
        try:
            self._load(self._request("GET", self.url), schema, allow_modules)
        except BaseException:
            self._client.close()
            raise

    def _load(
        self, info: dict[str, Any], schema: type[Record] | None, allow_modules: Sequence[str]
    ) -> None:
        self.id = Hash32(info["id"])
        self.name: str = info["name"]
        self.visibility: str = info["visibility"]
        self.owner: Address | None = Address(info["owner"]) if info["owner"] else None
        self.grants: str = info["grants"]
        self.duplicates: str = info["duplicates"]
        self.max_record_bytes = int(info["max_record_bytes"])
        self.encrypted = bool(info["encrypted"])
        found = schema or resolve_schema(info["schema_id"], info["schema_ref"], allow_modules)
        if schema_hash(found) != info["schema_hash"]:
            raise SchemaError(
                f"schema {found.__name__} does not match the datanet's schema "
                f"{info['schema_id']}; pass the datanet's own class as schema="
            )
        self.schema = found

    # -- transport ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        grant: AccessGrant | None = None,
        call: SignedCall | None = None,
    ) -> Any:
        headers: dict[str, str] = {}
        if grant is not None:
            headers[wire.GRANT_HEADER] = grant.model_dump_json()
            call = call or self._read_call(grant)
        if call is not None:
            headers[wire.CALL_HEADER] = call.model_dump_json()
        content = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._client.request(
                method, path, content=content, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise StoreError(f"cannot reach the datanet service at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _refusal(response)
        return response.json()

    def _read_call(self, grant: AccessGrant) -> SignedCall | None:
        reader = grant._reader
        if isinstance(reader, Account):
            return sign_call(self.id, "read", reader)
        return reader

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> RemoteDatanet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contributing -----------------------------------------------------------------------

    def next_nonce(self, contributor: Account | str) -> int:
        """Return the nonce the contributor's next signed contribution must carry."""
        address = as_account_address(contributor, what="contributor")
        return int(self._request("GET", f"nonces/{address}")["next_nonce"])

    def _prepare(self, records: Iterable[Any]) -> PreparedBatch:
        return prepare_batch(
            self.schema, records, max_record_bytes=self.max_record_bytes, rules=(), with_text=False
        )

    def record_hash(self, record: Any) -> Hash32:
        """Return the hash the datanet gives ``record`` (validated against the schema here)."""
        return record_hash(self._prepare([record]).records[0])

    def sign(self, records: Iterable[Any], *, contributor: Account) -> SignedContribution:
        """Sign records for this datanet with the contributor's next nonce, without sending."""
        batch = self._prepare(records)
        return sign_contribution(
            batch.hashes, datanet_id=self.id, contributor=contributor,
            nonce=self.next_nonce(contributor),
        )  # fmt: skip

    def contribute(
        self,
        records: Iterable[Any],
        *,
        contributor: Account | None = None,
        signed: SignedContribution | None = None,
        grant: AccessGrant | None = None,
    ) -> list[ContributionReceipt]:
        """Sign here (or take a contribution signed elsewhere) and send it to be stored.

        With ``contributor``, a nonce taken meanwhile by another process of the same
        contributor is a refusal that stores nothing; the records are then signed again
        with the next nonce (up to three times).

        Raises:
            SchemaError: As :meth:`Datanet.contribute`, from the service (so for all of
                these: nothing is stored then).
            QualityError: Likewise.
            DuplicateRecordError: Likewise.
            SignatureError: Likewise.
            NonceError: Likewise, after the retries.
            AccessDeniedError: Likewise.
        """
        if (contributor is None) == (signed is None):
            raise ConfigError(
                "pass exactly one of contributor=Account or signed=SignedContribution"
            )
        batch = self._prepare(records)
        rows = [r.model_dump(mode="json", exclude_none=True) for r in batch.records]
        for attempt in range(_NONCE_RETRIES):
            signing = signed or sign_contribution(
                batch.hashes, datanet_id=self.id, contributor=contributor,  # type: ignore[arg-type]
                nonce=self.next_nonce(contributor),  # type: ignore[arg-type]
            )  # fmt: skip
            body = {"records": rows, "signed": json.loads(signing.model_dump_json())}
            try:
                found = self._request("POST", "contributions", body=body, grant=grant)
            except NonceError:
                if signed is not None or attempt == _NONCE_RETRIES - 1:
                    raise
                continue
            return [wire.receipt_from_json(r) for r in found["data"]]
        raise AssertionError("unreachable")  # pragma: no cover

    def commit(
        self, commitments: Iterable[str | bytes], *, contributor: Account, ttl_seconds: int = 3600
    ) -> int:
        """Store commitments before revealing records (see ``Datanet.commit``); the
        contributor signs a ``commit`` call over them here. Returns how many were new."""
        listed = [c if isinstance(c, str) else to_hex(c) for c in commitments]
        call = sign_call(self.id, "commit", contributor, detail=commitments_digest(listed))
        body = {"commitments": listed, "ttl_seconds": ttl_seconds}
        return int(self._request("POST", "commitments", body=body, call=call)["stored"])

    def require_read(self, grant: AccessGrant | None = None) -> None:
        """Raise unless ``grant`` (or none, for a public datanet) reads now.

        Raises:
            AccessDeniedError: Naming why.
        """
        self.records_page(limit=1, grant=grant)

    def can_read(self, grant: AccessGrant | None = None) -> bool:
        """Return whether ``grant`` (or none, for a public datanet) reads now."""
        try:
            self.require_read(grant)
        except AccessDeniedError:
            return False
        return True

    # -- reading ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._request("GET", self.url)["records"])

    def records_page(
        self,
        *,
        after: int = 0,
        limit: int = _PAGE,
        grant: AccessGrant | None = None,
        include_rejected: bool = False,
    ) -> tuple[list[StoredRecord], int]:
        """One page of records and the cursor of the next (see ``Datanet.records_page``)."""
        params = {"after": after, "limit": limit, "include_rejected": include_rejected}
        found = self._request("GET", "records", params=params, grant=grant)
        page = [wire.stored_from_json(self.schema, r) for r in found["data"]]
        return page, int(found["next"])

    def records(
        self, *, grant: AccessGrant | None = None, include_rejected: bool = False
    ) -> Iterator[StoredRecord]:
        """Iterate stored records in arrival order, a page per request (records stored
        while iterating are included).

        Raises:
            AccessDeniedError: For a private datanet without a valid grant.
        """
        self.require_read(grant)
        return self._pages(grant, include_rejected)

    def _pages(self, grant: AccessGrant | None, include_rejected: bool) -> Iterator[StoredRecord]:
        after = 0
        while True:
            page, after = self.records_page(
                after=after, grant=grant, include_rejected=include_rejected
            )
            if not page:
                return
            yield from page

    def get(self, record_hash: str | bytes, *, grant: AccessGrant | None = None) -> StoredRecord:
        """Return one stored record by hash (a private datanet needs a grant).

        Raises:
            DataNotFoundError: No record has that hash.
            AccessDeniedError: A private datanet and no valid grant.
        """
        found = self._request("GET", f"records/{hex32(record_hash)}", grant=grant)
        return wire.stored_from_json(self.schema, found)

    # -- snapshots ----------------------------------------------------------------------------

    def snapshot(self, *, owner: Account) -> RemoteSnapshot:
        """Have the service freeze the accepted records into a new snapshot (the owner asks).

        The signed call carries a fresh random detail, so two snapshots asked for within
        one second are two calls (the service takes each signed call once).
        """
        call = sign_call(self.id, "snapshot", owner, detail=secrets.token_hex(16))
        return RemoteSnapshot.from_json(self._request("POST", "snapshots", call=call), self)

    def snapshots(self) -> list[int]:
        """Return the ids of all snapshots, oldest first."""
        return [int(s["id"]) for s in self._request("GET", "snapshots")["data"]]

    def snapshot_at(self, snapshot_id: int) -> RemoteSnapshot:
        """Fetch one snapshot; its manifest is checked against its hash, root and count.

        Raises:
            DataNotFoundError: No such snapshot.
            StoreError: The manifest does not hold together.
        """
        return RemoteSnapshot.from_json(self._request("GET", f"snapshots/{snapshot_id}"), self)

    def latest_snapshot(self) -> RemoteSnapshot | None:
        """Return the newest snapshot, or ``None``."""
        ids = self.snapshots()
        return self.snapshot_at(ids[-1]) if ids else None

    def __repr__(self) -> str:
        return (
            f"RemoteDatanet(name={self.name!r}, schema={self.schema.schema_id!r}, url={self.url!r})"
        )


def _refusal(response: httpx.Response) -> Exception:
    try:
        error = response.json()["error"]
        return wire.error_from_code(error.get("code"), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return StoreError(
            f"the datanet service answered {response.status_code}: {response.text[:200]}"
        )
