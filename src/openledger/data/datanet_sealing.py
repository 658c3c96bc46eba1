"""How :class:`~openledger.data.Datanet` seals and opens payloads encrypted at rest."""

from __future__ import annotations

from openledger.data import queries
from openledger.data.ingest import PreparedBatch
from openledger.data.sealing import PayloadCipher
from openledger.exceptions import AccessDeniedError, ConfigError
from openledger.types import Hash32

__all__ = ["SealingMethods"]


class SealingMethods:
    """The payload cipher of a datanet handle (none when the datanet does not encrypt)."""

    id: Hash32
    name: str
    encrypted: bool
    _cipher: PayloadCipher | None

    def _make_cipher(self, meta: dict[str, str], key: bytes | str | None) -> PayloadCipher | None:
        if key is None:
            return None
        if not self.encrypted:
            raise ConfigError(
                f"datanet {self.name!r} does not encrypt its payloads; encryption_key is for "
                "datanets created with one"
            )
        return PayloadCipher(key, self.id, meta["key_check"])

    def _opener(self) -> queries.Opener:
        if self._cipher is not None:
            return self._cipher.open
        if self.encrypted:
            raise AccessDeniedError(
                f"the records of {self.name!r} are encrypted at rest: open it with "
                "encryption_key= (the owner's key)"
            )
        return queries.as_stored

    def _sealed(self, batch: PreparedBatch) -> PreparedBatch:
        if self._cipher is None:
            return batch
        seal = self._cipher.seal
        payloads = [seal(p, h) for p, h in zip(batch.payloads, batch.hashes, strict=True)]
        return PreparedBatch(batch.records, payloads, batch.hashes, batch.texts)

    def _audit_opener(self) -> queries.Opener | None:
        return None if self.encrypted and self._cipher is None else self._opener()
