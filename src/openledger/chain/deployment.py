"""Deploying the protocol as a resumable plan, recorded in a deployment manifest.

The plan is a fixed sequence of transactions (contract creations, then the timelock's
setup). Each one is journaled before it is sent (its hash, nonce and signed bytes, as
``pending``) and recorded as soon as it is mined, in a JSON manifest written atomically and
fsync'd. A rerun with the same manifest skips what is recorded (checking that code exists at
every recorded address and that the shipped artifact is the same build), finds a journaled
transaction by its hash (or sends its signed bytes again if the node dropped it), and goes
on: a deployment killed at any point and rerun ends as one complete deployment, never two.

    manifest = DeploymentManifest.load("deployment.json")
    protocol = Protocol.from_manifest(chain, manifest)      # or chain.protocol("deployment.json")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from openledger.chain._artifacts import artifact_sha256
from openledger.chain.governance import CANCELLER_ROLE, PROPOSER_ROLE, TimelockClient
from openledger.crypto import Account, keccak256, to_checksum_address
from openledger.exceptions import ConfigError
from openledger.types import Address

if TYPE_CHECKING:
    from web3.types import TxReceipt

    from openledger.chain.client import Chain, SignedTransaction
    from openledger.chain.protocol import ProtocolAddresses

__all__ = [
    "MANIFEST_VERSION",
    "ContractRecord",
    "DeploymentManifest",
    "DeploymentSettings",
    "PendingTransaction",
    "StepRecord",
    "run_deployment",
]

MANIFEST_VERSION = 1
"""The manifest format this code writes and reads."""

_ZERO_ADDRESS = "0x" + "00" * 20
_DEFAULT_ADMIN_ROLE = bytes(32)


class DeploymentSettings(BaseModel):
    """What shapes a deployment; a resumed deployment must use the same.

    Amounts are token wei, durations seconds, rates basis points.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str | None
    initial_supply: int
    supply_cap: int
    treasury: str | None
    min_claim_window: int
    agent_params: tuple[int, int, int, int, int, int]
    governance: tuple[int, int, int, int, int]
    max_bond_slash_bps: int
    governed: bool

    @field_validator("token", "treasury")
    @classmethod
    def _checksum(cls, value: str | None) -> str | None:
        return None if value is None else to_checksum_address(value)


class ContractRecord(BaseModel):
    """One deployed contract.

    Attributes:
        contract: Its Solidity name.
        address: Where it lives.
        tx_hash: The transaction that created it (that of its creator for contracts made by
            another contract; ``None`` for a token given to the deployment).
        block_number: The block of that transaction.
        artifact_sha256: sha256 of the shipped artifact it was built from (``None`` for a
            given token).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    contract: str
    address: str
    tx_hash: str | None = None
    block_number: int | None = None
    artifact_sha256: str | None = None

    @field_validator("address")
    @classmethod
    def _checksum(cls, value: str) -> str:
        return to_checksum_address(value)


class StepRecord(BaseModel):
    """A mined setup transaction."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tx_hash: str
    block_number: int


class PendingTransaction(BaseModel):
    """A transaction signed and (maybe) sent, not yet known to be mined."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step: str
    tx_hash: str
    nonce: int
    raw: str


class DeploymentManifest(BaseModel):
    """Where a deployment lives and how it was made; written by ``openledger chain deploy``.

    Attributes:
        version: The manifest format (:data:`MANIFEST_VERSION`).
        chain_id: The chain it is on.
        deployer: The account that sent every transaction.
        settings: What shaped it.
        contracts: Deployed contracts by role (``token``, ``datanets``, ``models``,
            ``rewards``, ``votes``, ``agents``, ``bonds``, ``timelock``, ``governor``).
        steps: Mined setup transactions by name.
        pending: The transaction in flight, if the last run stopped during one.
        deployment_block: The block of the first transaction (read logs from there).
        complete: Whether every step is done.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    version: int = MANIFEST_VERSION
    chain_id: int
    deployer: str
    settings: DeploymentSettings
    contracts: dict[str, ContractRecord] = {}
    steps: dict[str, StepRecord] = {}
    pending: PendingTransaction | None = None
    deployment_block: int | None = None
    complete: bool = False

    @classmethod
    def load(cls, path: str | Path) -> DeploymentManifest:
        """Read a manifest file.

        Raises:
            ConfigError: If it cannot be read or is not a manifest of this version.
        """
        try:
            found = cls.model_validate_json(Path(path).read_bytes())
        except (OSError, ValidationError) as exc:
            raise ConfigError(f"cannot read a deployment manifest from {path}: {exc}") from None
        if found.version != MANIFEST_VERSION:
            raise ConfigError(f"{path}: manifest version {found.version}, expected 1")
        return found

    def save(self, path: str | Path) -> None:
        """Write the manifest atomically and fsync it (a crash leaves the old or the new)."""
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        with open(temporary, "wb") as handle:
            handle.write(self.model_dump_json(indent=2).encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def addresses(self) -> ProtocolAddresses:
        """Return the addresses of a complete deployment.

        Raises:
            ConfigError: If the deployment is not complete.
        """
        from openledger.chain.protocol import ProtocolAddresses

        if not self.complete:
            raise ConfigError(
                "the deployment is not complete; run `openledger chain deploy` again with "
                "this manifest to finish it"
            )
        keys = ProtocolAddresses.model_fields
        return ProtocolAddresses(**{k: r.address for k, r in self.contracts.items() if k in keys})

    def check(self, chain: Chain) -> None:
        """Check that the manifest is for ``chain`` and that every contract has code there.

        Raises:
            ConfigError: If the chain id differs.
            ContractNotFoundError: If an address holds no code.
        """
        if self.chain_id != chain.chain_id:
            raise ConfigError(
                f"the manifest is for chain {self.chain_id}, the node is chain {chain.chain_id}"
            )
        for key, record in self.contracts.items():
            chain.require_code(record.address, f"{record.contract} ({key})")


def run_deployment(
    chain: Chain,
    owner: Account,
    settings: DeploymentSettings,
    manifest_path: str | Path | None = None,
) -> DeploymentManifest:
    """Run (or resume) the deployment plan and return the complete manifest.

    Args:
        chain: Where to deploy.
        owner: The deployer; signs every transaction.
        settings: What to deploy.
        manifest_path: Where the manifest is journaled; an existing file is resumed.
            ``None`` keeps it in memory only (a single uninterrupted run).

    Raises:
        ConfigError: If an existing manifest is for another chain, deployer, settings or
            build of the contracts.
    """
    path = Path(manifest_path) if manifest_path is not None else None
    if path is not None and path.exists():
        manifest = DeploymentManifest.load(path)
        _check_resumable(manifest, chain, owner, settings)
    else:
        manifest = DeploymentManifest(
            chain_id=chain.chain_id, deployer=owner.address, settings=settings
        )
    if not manifest.complete:
        _Plan(chain, owner, manifest, path).run()
    return manifest


def _check_resumable(
    manifest: DeploymentManifest, chain: Chain, owner: Account, settings: DeploymentSettings
) -> None:
    manifest.check(chain)
    if manifest.deployer != owner.address:
        raise ConfigError(f"the manifest was deployed by {manifest.deployer}, not {owner.address}")
    if manifest.settings != settings:
        old, fields = manifest.settings, DeploymentSettings.model_fields
        changed = [k for k in fields if getattr(settings, k) != getattr(old, k)]
        raise ConfigError(
            f"the manifest was made with other settings ({', '.join(changed)}); "
            "rerun with the same options or use a new manifest"
        )
    for key, record in manifest.contracts.items():
        if record.artifact_sha256 not in (None, artifact_sha256(record.contract)):
            raise ConfigError(
                f"{key} was deployed from another build of {record.contract}; "
                "finish the deployment with the same openledger version or start a new one"
            )


class _Plan:
    """The protocol's transactions in order; each step runs once across reruns."""

    def __init__(
        self, chain: Chain, owner: Account, manifest: DeploymentManifest, path: Path | None
    ) -> None:
        self.chain = chain
        self.owner = owner
        self.manifest = manifest
        self.path = path

    def run(self) -> None:
        s, me = self.manifest.settings, self.owner.address
        governance = s.governance
        timelock = self._contract(
            "timelock", "OpenLedgerTimelock", governance[4], [], [_ZERO_ADDRESS], me
        )
        admin = timelock if s.governed else me
        token = s.token or self._contract(
            "token", "OpenToken", admin, me, s.initial_supply, s.supply_cap
        )
        if s.token is not None:
            self._record("token", ContractRecord(contract="OpenToken", address=s.token))
        treasury = s.treasury or timelock
        datanets = self._contract("datanets", "DatanetRegistry")
        self._contract("models", "ModelRegistry")
        rewards_args = (token, admin, me, treasury, s.min_claim_window)
        self._contract("rewards", "AttributionRewards", *rewards_args)
        votes = self._created_by("votes", "ContributionVotes", "rewards", "votes()")
        slasher = timelock if s.governed else me
        agents_args = (token, admin, slasher, treasury, s.agent_params)
        self._contract("agents", "AgentRegistry", *agents_args)
        bonds_args = (token, datanets, admin, treasury, s.max_bond_slash_bps)
        self._contract("bonds", "DataBonds", *bonds_args)
        governor_args = (votes, timelock, *governance[:4])
        governor = self._contract("governor", "OpenLedgerGovernor", *governor_args)
        timelock_client = TimelockClient(self.chain, timelock, self.owner)
        grant = timelock_client.encode_call
        self._step("timelock: governor proposes", grant("grantRole", PROPOSER_ROLE, governor))
        self._step("timelock: governor cancels", grant("grantRole", CANCELLER_ROLE, governor))
        renounce = grant("renounceRole", _DEFAULT_ADMIN_ROLE, me)
        self._step("timelock: deployer renounces its admin role", renounce)
        self.manifest.complete = True
        self._save()

    def _contract(self, key: str, name: str, *args: Any) -> Address:
        found = self.manifest.contracts.get(key)
        if found is not None:
            return Address(found.address)
        receipt = self._send(key, None, self.chain.creation_code(name, *args))
        address = to_checksum_address(str(receipt["contractAddress"]))
        record = ContractRecord(
            contract=name,
            address=address,
            tx_hash=receipt["transactionHash"].to_0x_hex(),
            block_number=int(receipt["blockNumber"]),
            artifact_sha256=artifact_sha256(name),
        )
        self._record(key, record)
        return address

    def _created_by(self, key: str, name: str, creator_key: str, getter: str) -> Address:
        """Record a contract another one created (its address read from ``getter``)."""
        found = self.manifest.contracts.get(key)
        if found is not None:
            return Address(found.address)
        creator = self.manifest.contracts[creator_key]
        selector = _selector(getter)
        raw = self.chain.call(creator.address, selector)
        address = to_checksum_address("0x" + raw[-20:].hex())
        self._record(
            key,
            creator.model_copy(
                update={
                    "contract": name,
                    "address": address,
                    "artifact_sha256": artifact_sha256(name),
                }
            ),
        )
        return address

    def _step(self, key: str, call: Any) -> None:
        if key in self.manifest.steps:
            return
        receipt = self._send(key, call.target, call.data)
        self.manifest.steps[key] = StepRecord(
            tx_hash=receipt["transactionHash"].to_0x_hex(), block_number=int(receipt["blockNumber"])
        )
        self._save()

    def _send(self, key: str, to: str | None, data: bytes) -> TxReceipt:
        pending = self.manifest.pending
        if pending is not None and pending.step == key:
            recovered = self._recover(pending)
            if recovered is not None:
                return self._mined(recovered)
        receipt = self.chain.send(to, data, sender=self.owner, on_signed=self._journal(key))
        return self._mined(receipt)

    def _journal(self, key: str) -> Callable[[SignedTransaction], None]:
        def write(signed: SignedTransaction) -> None:
            self.manifest.pending = PendingTransaction(
                step=key, tx_hash=signed.tx_hash, nonce=signed.nonce, raw="0x" + signed.raw.hex()
            )
            self._save()

        return write

    def _recover(self, pending: PendingTransaction) -> TxReceipt | None:
        """The receipt of a journaled transaction: found, waited for, or after sending its
        signed bytes again; ``None`` if it was dropped and its nonce used by another one."""
        chain = self.chain
        receipt = chain.find_receipt(pending.tx_hash)
        if receipt is None and not chain.is_pending(pending.tx_hash):
            if chain.nonce_of(self.owner.address) > pending.nonce:
                return None
            try:
                chain.send_raw(bytes.fromhex(pending.raw[2:]))
            except Exception:  # e.g. its fee is now below the base fee: sign it anew
                return None
        if receipt is None:
            receipt = chain.wait_for_receipt(pending.tx_hash)
        return chain.check_receipt(receipt)

    def _mined(self, receipt: TxReceipt) -> TxReceipt:
        self.manifest.pending = None
        if self.manifest.deployment_block is None:
            self.manifest.deployment_block = int(receipt["blockNumber"])
        return receipt

    def _record(self, key: str, record: ContractRecord) -> None:
        self.manifest.contracts[key] = record
        self._save()

    def _save(self) -> None:
        if self.path is not None:
            self.manifest.save(self.path)


def _selector(signature: str) -> bytes:
    return keccak256(signature.encode())[:4]
