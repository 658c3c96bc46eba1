"""The curated public surfaces of openledger.data and openledger.crypto are pinned."""

from __future__ import annotations

import subprocess
import sys

import openledger
import openledger.crypto
import openledger.data


def test_data_all_is_pinned() -> None:
    assert sorted(openledger.data.__all__) == sorted(
        [
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
    )
    assert all(hasattr(openledger.data, name) for name in openledger.data.__all__)


def test_crypto_all_is_pinned() -> None:
    assert sorted(openledger.crypto.__all__) == sorted(
        [
            "ZERO_HASH",
            "Account",
            "MultiProof",
            "StandardMerkleTree",
            "TypedData",
            "eip712_domain",
            "from_hex",
            "hash_pair",
            "keccak256",
            "keccak256_hex",
            "leaf_hash",
            "process_multiproof",
            "process_proof",
            "recover_typed_data",
            "root_of_leaves",
            "to_checksum_address",
            "to_hex",
            "typed_data",
            "typed_data_digest",
            "verify_multiproof",
            "verify_proof",
        ]
    )
    assert all(hasattr(openledger.crypto, name) for name in openledger.crypto.__all__)


def test_layers_load_lazily_and_without_torch() -> None:
    code = (
        "import sys, openledger as ol; ol.data.Datanet; ol.crypto.Account; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert openledger.data is openledger.data
