"""The exports and imports of :class:`~openledger.data.Datanet` (JSONL, Parquet, HF
``datasets``); the formats live in :mod:`.io`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from openledger.crypto import Account
from openledger.data import io
from openledger.data.access import AccessGrant
from openledger.data.receipts import ContributionReceipt

if TYPE_CHECKING:
    from openledger.data.datanet import Datanet

__all__ = ["ExportMethods"]


class ExportMethods:
    """Methods of :class:`~openledger.data.Datanet` that move records in and out in bulk."""

    def _datanet(self) -> Datanet:
        return cast("Datanet", self)

    # -- exports and imports ----------------------------------------------------------------

    def to_jsonl(self, path: str | os.PathLike[str], *, grant: AccessGrant | None = None) -> int:
        """Write accepted records to JSONL (fields plus provenance); return the count."""
        return io.write_jsonl(self._datanet().records(grant=grant), Path(path))

    def to_parquet(self, path: str | os.PathLike[str], *, grant: AccessGrant | None = None) -> int:
        """Write accepted records to Parquet (needs ``openledger[data]``); return the count."""
        return io.write_parquet(self._datanet().records(grant=grant), Path(path))

    def to_hf_dataset(self, *, grant: AccessGrant | None = None) -> Any:
        """Return accepted records as a ``datasets.Dataset`` (needs ``openledger[data]``)."""
        return io.write_hf_dataset(self._datanet().records(grant=grant))

    def import_jsonl(
        self, path: str | os.PathLike[str], *, contributor: Account, batch_size: int = 10_000
    ) -> list[ContributionReceipt]:
        """Contribute every row of a JSONL file, attributed to ``contributor``."""
        return io.import_rows(
            self._datanet(),
            io.jsonl_rows(Path(path)),
            contributor=contributor,
            batch_size=batch_size,
        )

    def import_parquet(
        self, path: str | os.PathLike[str], *, contributor: Account, batch_size: int = 10_000
    ) -> list[ContributionReceipt]:
        """Contribute every row of a Parquet file, attributed to ``contributor``."""
        return io.import_rows(
            self._datanet(),
            io.iter_parquet_rows(Path(path)),
            contributor=contributor,
            batch_size=batch_size,
        )

    def import_hf_dataset(
        self, dataset: Any, *, contributor: Account, batch_size: int = 10_000
    ) -> list[ContributionReceipt]:
        """Contribute every row of a ``datasets.Dataset``, attributed to ``contributor``."""
        return io.import_rows(
            self._datanet(),
            io.iter_hf_rows(dataset),
            contributor=contributor,
            batch_size=batch_size,
        )
