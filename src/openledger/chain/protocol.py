"""The deployed protocol: addresses plus one typed client per contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, field_validator

from openledger.chain.agents import SLASHER_ROLE, AgentParams, AgentRegistryClient
from openledger.chain.registries import DatanetRegistryClient, ModelRegistryClient
from openledger.chain.rewards import SETTLER_ROLE, AttributionRewardsClient, OpenTokenClient
from openledger.crypto import Account, to_checksum_address
from openledger.exceptions import ConfigError

if TYPE_CHECKING:
    from openledger.chain.client import Chain

__all__ = [
    "DEFAULT_MIN_CLAIM_WINDOW",
    "DEFAULT_SUPPLY_CAP",
    "Protocol",
    "ProtocolAddresses",
    "deploy_protocol",
]


class ProtocolAddresses(BaseModel):
    """Where the protocol's contracts live (JSON-friendly: ``model_dump()`` / ``(**dict)``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    datanets: str
    models: str
    rewards: str
    token: str
    agents: str | None = None

    @field_validator("datanets", "models", "rewards", "token", "agents", mode="before")
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
    """

    chain: Chain
    addresses: ProtocolAddresses
    datanets: DatanetRegistryClient
    models: ModelRegistryClient
    rewards: AttributionRewardsClient
    token: OpenTokenClient
    agents: AgentRegistryClient | None = None

    def require_agents(self) -> AgentRegistryClient:
        """Return :attr:`agents`.

        Raises:
            ConfigError: If this deployment has no ``AgentRegistry``.
        """
        if self.agents is None:
            raise ConfigError("this protocol has no AgentRegistry; pass its address as agents=")
        return self.agents

    @classmethod
    def at(
        cls,
        chain: Chain,
        addresses: ProtocolAddresses | dict[str, str],
        sender: Account | None = None,
    ) -> Protocol:
        """Bind clients to deployed contracts.

        Args:
            chain: The chain.
            addresses: A :class:`ProtocolAddresses` or a dict of its keys (``agents`` is
                optional).
            sender: Default signer of every client's transactions.

        Raises:
            ContractNotFoundError: If an address holds no code.
        """
        found = (
            addresses
            if isinstance(addresses, ProtocolAddresses)
            else ProtocolAddresses(**addresses)
        )
        token = OpenTokenClient(chain, found.token, sender)
        return cls(
            chain=chain,
            addresses=found,
            datanets=DatanetRegistryClient(chain, found.datanets, sender),
            models=ModelRegistryClient(chain, found.models, sender),
            rewards=AttributionRewardsClient(chain, found.rewards, token, sender),
            token=token,
            agents=(
                AgentRegistryClient(chain, found.agents, token, sender)
                if found.agents is not None
                else None
            ),
        )


DEFAULT_SUPPLY_CAP = 10**28
"""``OpenToken``'s cap when :func:`deploy_protocol` deploys it: 10 billion OPEN."""

DEFAULT_MIN_CLAIM_WINDOW = 3600
"""Shortest claim window (seconds) of a fresh ``AttributionRewards``; the floor it allows."""


def deploy_protocol(
    chain: Chain,
    *,
    admin: Account | None = None,
    token: str | None = None,
    initial_supply: int = 10**27,
    supply_cap: int = DEFAULT_SUPPLY_CAP,
    treasury: str | None = None,
    min_claim_window: int = DEFAULT_MIN_CLAIM_WINDOW,
    agent_params: AgentParams | None = None,
) -> Protocol:
    """Deploy the protocol and make ``admin`` its rewards admin and settler.

    Args:
        chain: Where to deploy.
        admin: Deployer, admin of every contract, settler and minter (default: the chain's
            first dev account).
        token: An existing ERC-20 to pay rewards in; ``None`` deploys an ``OpenToken`` that
            mints ``initial_supply`` to ``admin``.
        initial_supply: Tokens minted to ``admin`` when deploying ``OpenToken``.
        supply_cap: The most ``OpenToken`` that can ever exist.
        treasury: Where swept rewards go (default: ``admin``).
        min_claim_window: Shortest claim window of reward epochs, in seconds.
        agent_params: Staking and slashing parameters of the ``AgentRegistry``
            (default :class:`~openledger.chain.AgentParams`); ``admin`` also gets its
            ``SLASHER_ROLE``.

    Returns:
        The protocol, with ``admin`` as every client's default sender.
    """
    owner = admin or chain.default_account
    token_address = token or chain.deploy(
        "OpenToken", owner.address, initial_supply, supply_cap, sender=owner
    )
    sink = to_checksum_address(treasury or owner.address)
    rewards_args = (token_address, owner.address, sink, min_claim_window)
    addresses = ProtocolAddresses(
        datanets=chain.deploy("DatanetRegistry", sender=owner),
        models=chain.deploy("ModelRegistry", sender=owner),
        rewards=chain.deploy("AttributionRewards", *rewards_args, sender=owner),
        token=token_address,
        agents=chain.deploy(
            "AgentRegistry",
            token_address,
            owner.address,
            sink,
            (agent_params or AgentParams()).as_abi_tuple(),
            sender=owner,
        ),
    )
    protocol = Protocol.at(chain, addresses, sender=owner)
    protocol.rewards.grant_role(SETTLER_ROLE, owner.address)
    protocol.require_agents().grant_role(SLASHER_ROLE, owner.address)
    return protocol
