"""The curated public surface of openledger.chain, pinned."""

from __future__ import annotations

import subprocess
import sys

import openledger.chain as chain
from openledger.crypto import Account

EXPECTED = {
    "ANVIL_MNEMONIC", "CONTRACT_NAMES", "MANIFEST_TAG", "MINTER_ROLE", "RECORD_LEAF_ENCODING",
    "REWARD_LEAF_ENCODING", "SETTLER_ROLE", "SLASHER_ROLE", "Account", "AgentInfo", "AgentParams",
    "AgentRegistryClient", "Artifact", "AttributionRewardsClient", "Backend", "BondInfo",
    "BondPolicy", "Call", "Chain", "ChainConnectionError", "ChainError", "ContractNotFoundError",
    "ContractRevertError", "ContributionVotesClient", "DataBondsClient", "DatanetInfo",
    "DatanetRegistryClient", "DeploymentManifest", "DisputeInfo", "DisputeStatus", "EpochInfo",
    "Event", "FailedServiceReport", "FlagInfo", "FlagKind", "GovernanceClient",
    "GovernanceParams", "ModelInfo", "ModelManifest", "ModelRegistryClient", "ModelStatus",
    "OpenTokenClient", "Proposal", "ProposalState", "Protocol", "ProtocolAddresses", "Receipt",
    "RewardTree", "SignedTransaction", "SnapshotInfo", "Support", "TimelockClient",
    "TransactionTimeoutError", "connect", "datanet_id", "decode_revert", "deploy_protocol",
    "load_artifact", "manifest_hash", "model_id", "record_leaf", "reward_leaf",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert set(chain.__all__) == EXPECTED
    assert all(hasattr(chain, name) for name in chain.__all__)


def test_account_is_the_crypto_account() -> None:
    assert chain.Account is Account


def test_chain_imports_no_torch() -> None:
    code = "import sys, openledger.chain; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
