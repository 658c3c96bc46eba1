"""The on-chain protocol: an EVM client and typed clients of the openledger contracts.

Torch-free. ``connect()`` gives an in-process py-evm chain with funded dev accounts;
``connect(url)`` any EVM JSON-RPC node (anvil's dev accounts are recognised)::

    chain = openledger.chain.connect()
    protocol = chain.deploy_protocol()            # or chain.protocol(addresses)
    protocol.datanets.register_datanet("medqa")
    tree = RewardTree({alice.address: 10**18})
    protocol.rewards.post_reward_tree(1, tree, deadline=chain.block_timestamp() + 86400)
    protocol.rewards.claim_from_tree(1, tree, alice)
    protocol.require_agents().stake_and_register(100 * 10**18, sender=agent)  # an agent stakes
    protocol.require_governance().get_votes(alice.address)    # votes earned by claims
    protocol.require_bonds().approve_and_bond(datanet, 10**20, sender=contributor)

Every revert, on every backend, is raised as
:class:`~openledger.exceptions.ContractRevertError` with the decoded custom error.
"""

from __future__ import annotations

from openledger.chain._artifacts import CONTRACT_NAMES, Artifact, load_artifact
from openledger.chain.agents import (
    SLASHER_ROLE,
    AgentInfo,
    AgentParams,
    AgentRegistryClient,
    DisputeInfo,
    DisputeStatus,
    FailedServiceReport,
)
from openledger.chain.bindings import Call, Event, Receipt
from openledger.chain.bonds import BondInfo, BondPolicy, DataBondsClient, FlagInfo, FlagKind
from openledger.chain.client import ANVIL_MNEMONIC, Backend, Chain, SignedTransaction, connect
from openledger.chain.deployment import DeploymentManifest
from openledger.chain.encoding import (
    MANIFEST_TAG,
    RECORD_LEAF_ENCODING,
    REWARD_LEAF_ENCODING,
    ModelManifest,
    RewardTree,
    datanet_id,
    manifest_hash,
    model_id,
    record_leaf,
    reward_leaf,
)
from openledger.chain.errors import decode_revert
from openledger.chain.governance import (
    ContributionVotesClient,
    GovernanceClient,
    GovernanceParams,
    Proposal,
    ProposalState,
    Support,
    TimelockClient,
)
from openledger.chain.protocol import Protocol, ProtocolAddresses, deploy_protocol
from openledger.chain.registries import (
    DatanetInfo,
    DatanetRegistryClient,
    ModelInfo,
    ModelRegistryClient,
    ModelStatus,
    SnapshotInfo,
)
from openledger.chain.rewards import (
    MINTER_ROLE,
    SETTLER_ROLE,
    AttributionRewardsClient,
    EpochInfo,
    OpenTokenClient,
)
from openledger.crypto import Account
from openledger.exceptions import (
    ChainConnectionError,
    ChainError,
    ContractNotFoundError,
    ContractRevertError,
    TransactionTimeoutError,
)

__all__ = [
    "ANVIL_MNEMONIC",
    "CONTRACT_NAMES",
    "MANIFEST_TAG",
    "MINTER_ROLE",
    "RECORD_LEAF_ENCODING",
    "REWARD_LEAF_ENCODING",
    "SETTLER_ROLE",
    "SLASHER_ROLE",
    "Account",
    "AgentInfo",
    "AgentParams",
    "AgentRegistryClient",
    "Artifact",
    "AttributionRewardsClient",
    "Backend",
    "BondInfo",
    "BondPolicy",
    "Call",
    "Chain",
    "ChainConnectionError",
    "ChainError",
    "ContractNotFoundError",
    "ContractRevertError",
    "ContributionVotesClient",
    "DataBondsClient",
    "DatanetInfo",
    "DatanetRegistryClient",
    "DeploymentManifest",
    "DisputeInfo",
    "DisputeStatus",
    "EpochInfo",
    "Event",
    "FailedServiceReport",
    "FlagInfo",
    "FlagKind",
    "GovernanceClient",
    "GovernanceParams",
    "ModelInfo",
    "ModelManifest",
    "ModelRegistryClient",
    "ModelStatus",
    "OpenTokenClient",
    "Proposal",
    "ProposalState",
    "Protocol",
    "ProtocolAddresses",
    "Receipt",
    "RewardTree",
    "SignedTransaction",
    "SnapshotInfo",
    "Support",
    "TimelockClient",
    "TransactionTimeoutError",
    "connect",
    "datanet_id",
    "decode_revert",
    "deploy_protocol",
    "load_artifact",
    "manifest_hash",
    "model_id",
    "record_leaf",
    "reward_leaf",
]
