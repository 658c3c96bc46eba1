"""Decode contract reverts into :class:`~openledger.exceptions.ContractRevertError`.

Backends report a revert differently: the embedded py-evm chain raises eth-tester's
``TransactionFailed`` whose message holds the raw revert bytes, while a JSON-RPC node such
as anvil makes web3 raise ``ContractCustomError`` / ``ContractLogicError`` /
``ContractPanicError`` with the data as hex. Both are turned into the same exception by
looking the 4-byte selector up in the ABIs of every openledger contract.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode

from openledger.chain._artifacts import CONTRACT_NAMES, load_artifact
from openledger.crypto import keccak256, to_checksum_address
from openledger.exceptions import ContractRevertError

__all__ = ["decode_revert", "revert_error_from"]

_REVERT_PREFIX = "execution reverted: "


@dataclass(frozen=True, slots=True)
class _ErrorSpec:
    name: str
    names: tuple[str, ...]
    types: tuple[str, ...]


def abi_type(param: dict[str, Any]) -> str:
    """Return the canonical ABI type of an ABI parameter entry (tuples spelled out)."""
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(abi_type(c) for c in param["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


@cache
def _error_table() -> dict[bytes, _ErrorSpec]:
    table = {
        keccak256(b"Error(string)")[:4]: _ErrorSpec("Error", ("message",), ("string",)),
        keccak256(b"Panic(uint256)")[:4]: _ErrorSpec("Panic", ("code",), ("uint256",)),
    }
    for contract in CONTRACT_NAMES:
        for entry in load_artifact(contract).abi:
            if entry["type"] != "error":
                continue
            types = tuple(abi_type(p) for p in entry["inputs"])
            names = tuple(p["name"] or f"arg{i}" for i, p in enumerate(entry["inputs"]))
            selector = keccak256(f"{entry['name']}({','.join(types)})".encode())[:4]
            table[selector] = _ErrorSpec(entry["name"], names, types)
    return table


def _plain(value: Any, kind: str) -> Any:
    if kind == "address":
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


def decode_revert(data: bytes) -> ContractRevertError:
    """Decode raw revert data against the openledger ABIs.

    Args:
        data: The bytes a reverting call returned (selector + ABI-encoded arguments).

    Returns:
        The exception to raise; an unknown selector keeps its hex as the name
        (``"0x12345678"``) and the data, so nothing is lost.
    """
    spec = _error_table().get(data[:4])
    if spec is None:
        return ContractRevertError("0x" + data[:4].hex() if data else "", {}, data)
    try:
        values = abi_decode(list(spec.types), data[4:])
    except Exception:  # malformed arguments: keep the name, report the raw data
        return ContractRevertError(spec.name, {}, data)
    args = {n: _plain(v, t) for n, v, t in zip(spec.names, values, spec.types, strict=True)}
    return ContractRevertError(spec.name, args, data)


def _data_from_tester_message(message: str) -> bytes | None:
    if not message.startswith(_REVERT_PREFIX):
        return None
    body = message[len(_REVERT_PREFIX) :]
    try:
        value = ast.literal_eval(body)
    except (ValueError, SyntaxError):
        # NOTE: eth-tester gives a require() message as plain text, not as bytes.
        return keccak256(b"Error(string)")[:4] + _encode_string(body)
    return value if isinstance(value, bytes) else None


def _encode_string(text: str) -> bytes:
    return abi_encode(["string"], [text])


def _data_from_hex(value: Any) -> bytes | None:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            return None
    return None


def revert_error_from(exc: BaseException) -> ContractRevertError | None:
    """Translate a backend's revert exception, or return ``None`` if ``exc`` is no revert.

    Args:
        exc: What web3 or eth-tester raised from a call, gas estimate or send.

    Returns:
        The decoded :class:`ContractRevertError`, or ``None`` for unrelated errors.
    """
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractLogicError

    if isinstance(exc, TransactionFailed):
        data = _data_from_tester_message(str(exc.args[0]) if exc.args else "")
        return decode_revert(data if data is not None else b"")
    if isinstance(exc, ContractLogicError):
        data = _data_from_hex(exc.data)
        return decode_revert(data if data is not None else b"")
    return None
