"""Datanets: community datasets with provenance, signed contributions and provable snapshots.

Quick tour::

    import openledger as ol
    dn = ol.data.Datanet.create("./medqa", name="medqa", schema=ol.data.InstructionRecord)
    alice = ol.crypto.Account.create()
    receipts = dn.contribute([{"instruction": "...", "response": "..."}], contributor=alice)
    snap = dn.snapshot()
    assert ol.data.verify_proof(snap.root, receipts[0].record_hash, alice.address,
                                snap.proof(receipts[0].record_hash))

A datanet hosted by a service (``openledger datanets serve``) is used the same way through
``ol.data.RemoteDatanet(url)``. This layer imports no torch. The canonical encoding and
the snapshot leaf format are specified in docs/data.md.
"""

from __future__ import annotations

from openledger.data.access import AccessGrant, AccessRequest
from openledger.data.audit import AuditReport
from openledger.data.canonical import canonical_bytes, record_hash
from openledger.data.commitments import commitment_of
from openledger.data.contribution_files import (
    CONTRIBUTION_SUFFIXES,
    read_contribution_file,
    read_csv_rows,
)
from openledger.data.convert import (
    from_alpaca,
    from_openai_messages,
    from_prompt_completion,
    from_sharegpt,
    read_jsonl,
)
from openledger.data.datanet import ContributionGate, Datanet
from openledger.data.ingest import DEFAULT_MAX_RECORD_BYTES
from openledger.data.quality import (
    SECRET_PATTERNS,
    DenyPatternRule,
    LengthRule,
    QualityRule,
    RequiredFieldsRule,
)
from openledger.data.receipts import ContributionReceipt, Reputation, Review, StoredRecord
from openledger.data.remote import RemoteDatanet
from openledger.data.remote_snapshot import RemoteSnapshot
from openledger.data.schemas import (
    ChatMessage,
    ChatRecord,
    ClassificationRecord,
    InstructionRecord,
    Record,
    TextRecord,
    schema_hash,
)
from openledger.data.signing import SignedContribution, records_root, sign_contribution
from openledger.data.snapshot import SNAPSHOT_LEAF_ENCODING, Snapshot, verify_proof

__all__ = [
    "CONTRIBUTION_SUFFIXES",
    "DEFAULT_MAX_RECORD_BYTES",
    "SECRET_PATTERNS",
    "SNAPSHOT_LEAF_ENCODING",
    "AccessGrant",
    "AccessRequest",
    "AuditReport",
    "ChatMessage",
    "ChatRecord",
    "ClassificationRecord",
    "ContributionGate",
    "ContributionReceipt",
    "Datanet",
    "DenyPatternRule",
    "InstructionRecord",
    "LengthRule",
    "QualityRule",
    "Record",
    "RemoteDatanet",
    "RemoteSnapshot",
    "Reputation",
    "RequiredFieldsRule",
    "Review",
    "SignedContribution",
    "Snapshot",
    "StoredRecord",
    "TextRecord",
    "canonical_bytes",
    "commitment_of",
    "from_alpaca",
    "from_openai_messages",
    "from_prompt_completion",
    "from_sharegpt",
    "read_contribution_file",
    "read_csv_rows",
    "read_jsonl",
    "record_hash",
    "records_root",
    "schema_hash",
    "sign_contribution",
    "verify_proof",
]
