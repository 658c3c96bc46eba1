"""The deployed protocol: addresses plus one typed client per contract."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator

from openledger.chain.agents import AgentParams, AgentRegistryClient
from openledger.chain.bonds import DataBondsClient
from openledger.chain.governance import (
    ContributionVotesClient,
    GovernanceClient,
    GovernanceParams,
    TimelockClient,
)
from openledger.chain.registries import DatanetRegistryClient, ModelRegistryClient
from openledger.chain.rewards import AttributionRewardsClient, OpenTokenClient
from openledger.crypto import Account, to_checksum_address
from openledger.exceptions import ConfigError

if TYPE_CHECKING:
    from openledger.chain.client import Chain
    from openledger.chain.deployment import DeploymentManifest

__all__ = [
    "DEFAULT_MAX_BOND_SLASH_BPS",
    "DEFAULT_MIN_CLAIM_WINDOW",
    "DEFAULT_SUPPLY_CAP",
    "Protocol",
    "ProtocolAddresses",
    "deploy_protocol",
]


class ProtocolAddresses(BaseModel):
    """Where the protocol's contracts live (JSON-friendly: ``model_dump()`` / ``(**dict)``).

    The optional ones are absent from deployments made before they existed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    datanets: str
    models: str
    rewards: str
    token: str
    agents: str | None = None
    votes: str | None = None
    governor: str | None = None
    timelock: str | None = None
    bonds: str | None = None

    @field_validator(
        "datanets", "models", "rewards", "token", "agents", "votes", "governor", "timelock",
        "bonds", mode="before",
    )  # fmt: skip
    @classmethod
    def _checksum(cls, value: str | None) -> str | None:
        return None if value is None else to_checksum_address(value)


@dataclass(frozen=True, slots=True)
class Protocol:
    """Typed clients of one deployment.

    Attributes:
        chain: The chain it lives on.
        addresses: The contract addresses.
        datanets: ``DatanetRegistry`` client.
        models: ``ModelRegistry`` client.
        rewards: ``AttributionRewards`` client.
        token: Client of the reward token.
        agents: ``AgentRegistry`` client (``None`` for a deployment without one).
        governance: The governor with its votes and timelock (``None`` without them).
        bonds: ``DataBonds`` client (``None`` for a deployment without one).
    """

    chain: Chain
    addresses: ProtocolAddresses
    datanets: DatanetRegistryClient
    models: ModelRegistryClient
    rewards: AttributionRewardsClient
    token: OpenTokenClient
    agents: AgentRegistryClient | None = None
    governance: GovernanceClient | None = None
    bonds: DataBondsClient | None = None

    def require_agents(self) -> AgentRegistryClient:
        """Return :attr:`agents`.

        Raises:
            ConfigError: If this deployment has no ``AgentRegistry``.
        """
        if self.agents is None:
            raise ConfigError("this protocol has no AgentRegistry; pass its address as agents=")
        return self.agents

    def require_governance(self) -> GovernanceClient:
        """Return :attr:`governance`.

        Raises:
            ConfigError: If this deployment has no governor (addresses ``votes``,
                ``governor`` and ``timelock``).
        """
        if self.governance is None:
            raise ConfigError(
                "this protocol has no governance; pass votes=, governor= and timelock="
            )
        return self.governance

    def require_bonds(self) -> DataBondsClient:
        """Return :attr:`bonds`.

        Raises:
            ConfigError: If this deployment has no ``DataBonds``.
        """
        if self.bonds is None:
            raise ConfigError("this protocol has no DataBonds; pass its address as bonds=")
        return self.bonds

    @classmethod
    def at(
        cls,
        chain: Chain,
        addresses: ProtocolAddresses | DeploymentManifest | dict[str, Any],
        sender: Account | None = None,
    ) -> Protocol:
        """Bind clients to deployed contracts.

        Args:
            chain: The chain.
            addresses: A :class:`ProtocolAddresses` or a dict of its keys (only
                ``datanets``, ``models``, ``rewards`` and ``token`` are required), or a
                deployment manifest (as a model or the dict of its JSON).
            sender: Default signer of every client's transactions.

        Raises:
            ContractNotFoundError: If an address holds no code.
            ConfigError: If a manifest is incomplete or for another chain.
        """
        from openledger.chain.deployment import DeploymentManifest

        if isinstance(addresses, dict) and "contracts" in addresses:
            addresses = DeploymentManifest.model_validate(addresses)
        if isinstance(addresses, DeploymentManifest):
            return cls.from_manifest(chain, addresses, sender=sender)
        found = (
            addresses
            if isinstance(addresses, ProtocolAddresses)
            else ProtocolAddresses(**addresses)
        )
        return cls._bind(chain, found, sender, from_block=0)

    @classmethod
    def from_manifest(
        cls,
        chain: Chain,
        manifest: DeploymentManifest | str | Path,
        sender: Account | None = None,
    ) -> Protocol:
        """Bind clients to a complete deployment described by a manifest (or its file).

        Raises:
            ConfigError: If the manifest is unreadable, incomplete or for another chain.
            ContractNotFoundError: If a recorded address holds no code.
        """
        from openledger.chain.deployment import DeploymentManifest

        found = (
            manifest
            if isinstance(manifest, DeploymentManifest)
            else DeploymentManifest.load(manifest)
        )
        if found.chain_id != chain.chain_id:
            raise ConfigError(
                f"the manifest is for chain {found.chain_id}, the node is chain {chain.chain_id}"
            )
        # NOTE: every client checks that its address holds code.
        return cls._bind(chain, found.addresses(), sender, from_block=found.deployment_block or 0)

    @classmethod
    def _bind(
        cls, chain: Chain, found: ProtocolAddresses, sender: Account | None, from_block: int
    ) -> Protocol:
        token = OpenTokenClient(chain, found.token, sender)
        governance = None
        if found.governor is not None and found.votes is not None and found.timelock is not None:
            governance = GovernanceClient(
                chain,
                found.governor,
                ContributionVotesClient(chain, found.votes, sender),
                TimelockClient(chain, found.timelock, sender),
                sender,
                from_block=from_block,
            )
        return cls(
            chain=chain,
            addresses=found,
            datanets=DatanetRegistryClient(chain, found.datanets, sender),
            models=ModelRegistryClient(chain, found.models, sender),
            rewards=AttributionRewardsClient(chain, found.rewards, token, sender),
            token=token,
            agents=(
                None
                if found.agents is None
                else AgentRegistryClient(chain, found.agents, token, sender)
            ),
            governance=governance,
            bonds=(
                None if found.bonds is None else DataBondsClient(chain, found.bonds, token, sender)
            ),
        )


DEFAULT_SUPPLY_CAP = 10**28
"""``OpenToken``'s cap when :func:`deploy_protocol` deploys it: 10 billion OPEN."""

DEFAULT_MIN_CLAIM_WINDOW = 3600
"""Shortest claim window (seconds) of a fresh ``AttributionRewards``; the floor it allows."""

DEFAULT_MAX_BOND_SLASH_BPS = 5_000
"""The highest slash rate a datanet may set in a fresh ``DataBonds``: half a bond per flag."""


def deploy_protocol(
    chain: Chain,
    *,
    admin: Account | None = None,
    token: str | None = None,
    initial_supply: int = 10**27,
    supply_cap: int | None = None,
    treasury: str | None = None,
    min_claim_window: int | None = None,
    agent_params: AgentParams | None = None,
    governance: GovernanceParams | None = None,
    max_bond_slash_bps: int | None = None,
    governed: bool = False,
    manifest: str | Path | None = None,
) -> Protocol:
    """Deploy the protocol: registries, rewards (with their votes), agents, data bonds, the
    governor and its timelock, and (unless ``token`` is given) an ``OpenToken``.

    ``admin`` settles reward epochs either way. With ``governed=False`` (development) it is
    also the admin of every parameter, the agents' slasher and the token's minter; with
    ``governed=True`` the timelock is, so only passed proposals change them.

    Args:
        chain: Where to deploy.
        admin: Deployer and settler, and the admin unless ``governed`` (default: the chain's
            first dev account).
        token: An existing ERC-20 to pay rewards in; ``None`` deploys an ``OpenToken`` that
            mints ``initial_supply`` to ``admin``.
        initial_supply: Tokens minted to ``admin`` when deploying ``OpenToken``.
        supply_cap: The most ``OpenToken`` that can ever exist (default
            :data:`DEFAULT_SUPPLY_CAP`).
        treasury: Where swept rewards and penalties go (default: the timelock, which
            spends only by proposal).
        min_claim_window: Shortest claim window of reward epochs, in seconds (default
            :data:`DEFAULT_MIN_CLAIM_WINDOW`).
        agent_params: Staking and slashing parameters of the ``AgentRegistry``
            (default :class:`~openledger.chain.AgentParams`).
        governance: Voting and timelock settings (default
            :class:`~openledger.chain.GovernanceParams`).
        max_bond_slash_bps: The highest slash rate a datanet may set in ``DataBonds``
            (default :data:`DEFAULT_MAX_BOND_SLASH_BPS`).
        governed: Make the timelock the admin of every contract and the agents' slasher.
        manifest: A JSON file to journal the deployment in; an existing one is resumed
            (see :mod:`openledger.chain.deployment`).

    Returns:
        The protocol, with ``admin`` as every client's default sender.
    """
    from openledger.chain.deployment import DeploymentSettings, run_deployment

    owner = admin or chain.default_account
    settings = DeploymentSettings(
        token=token,
        initial_supply=initial_supply,
        supply_cap=DEFAULT_SUPPLY_CAP if supply_cap is None else supply_cap,
        treasury=treasury,
        min_claim_window=DEFAULT_MIN_CLAIM_WINDOW if min_claim_window is None else min_claim_window,
        agent_params=(agent_params or AgentParams()).as_abi_tuple(),
        governance=(governance or GovernanceParams()).as_tuple(),
        max_bond_slash_bps=(
            DEFAULT_MAX_BOND_SLASH_BPS if max_bond_slash_bps is None else max_bond_slash_bps
        ),
        governed=governed,
    )
    done = run_deployment(chain, owner, settings, manifest)
    return Protocol.from_manifest(chain, done, sender=owner)
