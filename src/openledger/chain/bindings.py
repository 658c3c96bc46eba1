"""The base of the typed contract clients, and the receipt they return.

A client binds one deployed contract to a :class:`~openledger.chain.Chain`. Its methods are
named after the contract's functions in snake_case; views return plain Python values
(``0x``-hex hashes, checksummed addresses, ints), writes return a :class:`Receipt` whose
events are decoded against the contract's ABI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

from eth_abi.abi import decode as abi_decode
from eth_typing import ChecksumAddress
from web3.contract import Contract

from openledger.chain._artifacts import load_artifact
from openledger.chain.errors import abi_type
from openledger.crypto import Account, keccak256
from openledger.exceptions import ChainConnectionError
from openledger.types import Address, Hash32, to_hash32

if TYPE_CHECKING:
    from web3.types import TxReceipt

    from openledger.chain.client import Chain

__all__ = ["Call", "ContractClient", "Event", "Receipt"]


@dataclass(frozen=True, slots=True)
class Call:
    """One contract call to be made later, e.g. by the timelock when a proposal executes.

    Attributes:
        target: The contract to call.
        data: ABI-encoded calldata.
        value: Native coin to send with it, in wei.
    """

    target: Address
    data: bytes
    value: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded event log.

    Attributes:
        name: The event name, e.g. ``"SnapshotPublished"``.
        args: Its arguments by name (hashes as ``0x``-hex, addresses checksummed).
        address: The emitting contract.
    """

    name: str
    args: dict[str, Any]
    address: Address


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome of a successful transaction.

    Attributes:
        tx_hash: The transaction hash.
        block_number: The block it was mined in.
        gas_used: Gas it consumed.
        events: Events of the client's contract, in log order.
    """

    tx_hash: Hash32
    block_number: int
    gas_used: int
    events: tuple[Event, ...] = field(default=())

    def event(self, name: str) -> dict[str, Any]:
        """Return the arguments of the first event called ``name``.

        Raises:
            LookupError: If the transaction emitted no such event.
        """
        for event in self.events:
            if event.name == name:
                return event.args
        raise LookupError(f"the transaction emitted no {name} event")


def plain(value: Any) -> Any:
    """Convert web3 return values to plain ones: bytes32 -> ``0x``-hex, tuples -> lists."""
    if isinstance(value, bytes):
        return to_hash32(value) if len(value) == 32 else "0x" + value.hex()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class ContractClient:
    """Shared plumbing of the typed clients: calls, transactions and event decoding.

    Args:
        chain: The chain the contract lives on.
        address: The contract's address.
        sender: Default signer of transactions (else the chain's default account).
    """

    contract_name: ClassVar[str]

    def __init__(self, chain: Chain, address: str, sender: Account | None = None) -> None:
        self.chain = chain
        self.address: Address = chain.require_code(address, self.contract_name)
        self.sender = sender
        self._contract: Contract = chain.w3.eth.contract(
            address=cast(ChecksumAddress, self.address), abi=load_artifact(self.contract_name).abi
        )
        self._events = _event_table(load_artifact(self.contract_name).abi)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self.address!r})"

    def encode_call(self, function: str, *args: Any, value: int = 0) -> Call:
        """Return a :class:`Call` of ``function(*args)`` on this contract, to send later.

        Arguments are ABI values: checksummed addresses, ``bytes`` for ``bytes32``, tuples
        for structs. Used to build governance proposals, e.g.
        ``protocol.token.encode_call("transfer", grantee, amount)``.
        """
        data = bytes.fromhex(self._contract.encode_abi(function, args=list(args))[2:])
        return Call(self.address, data, value)

    def _call(self, function: str, *args: Any) -> Any:
        data = bytes.fromhex(self._contract.encode_abi(function, args=list(args))[2:])
        raw = self.chain.call(self.address, data)
        outputs = self._output_types(function)
        values = abi_decode(outputs, raw)
        return values[0] if len(values) == 1 else values

    def _transact(
        self, function: str, *args: Any, sender: Account | None = None, extra_gas: int = 0
    ) -> Receipt:
        data = self.encode_call(function, *args).data
        signer = sender or self.sender
        receipt = self.chain.send(self.address, data, sender=signer, extra_gas=extra_gas)
        return self._receipt(receipt)

    def _logs(self, event: str, from_block: int) -> list[dict[str, Any]]:
        """Return the arguments of every ``event`` this contract emitted since ``from_block``."""
        try:
            found = self._contract.events[event]().get_logs(from_block=cast(Any, from_block))
        except Exception as exc:  # requests' and web3's errors when the node is unreachable
            raise ChainConnectionError(f"reading {event} logs failed: {exc}") from exc
        return [{k: plain(v) for k, v in log["args"].items()} for log in found]

    def _receipt(self, receipt: TxReceipt) -> Receipt:
        events = []
        for log in receipt["logs"]:
            topics = log["topics"]
            if (
                str(log["address"]) != self.address
                or not topics
                or bytes(topics[0]) not in self._events
            ):
                continue
            name = self._events[bytes(topics[0])]
            decoded = self._contract.events[name]().process_log(log)
            args = {k: plain(v) for k, v in decoded["args"].items()}
            events.append(Event(name, args, self.address))
        return Receipt(
            tx_hash=to_hash32(bytes(receipt["transactionHash"])),
            block_number=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            events=tuple(events),
        )

    def _output_types(self, function: str) -> list[str]:
        for entry in load_artifact(self.contract_name).abi:
            if entry["type"] == "function" and entry["name"] == function:
                return [abi_type(o) for o in entry["outputs"]]
        raise AttributeError(f"{self.contract_name} has no function {function}")


def _event_table(abi: list[dict[str, Any]]) -> dict[bytes, str]:
    table = {}
    for entry in abi:
        if entry["type"] == "event":
            signature = f"{entry['name']}({','.join(abi_type(p) for p in entry['inputs'])})"
            table[keccak256(signature.encode())] = entry["name"]
    return table
