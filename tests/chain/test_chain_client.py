"""The client's plumbing: revert decoding paths, nonces, timeouts, bad endpoints."""

from __future__ import annotations

import pickle
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from openledger.chain import (
    Account,
    Chain,
    ChainConnectionError,
    ContractNotFoundError,
    ContractRevertError,
    Protocol,
    TransactionTimeoutError,
    connect,
    datanet_id,
    decode_revert,
)
from openledger.chain.errors import revert_error_from
from openledger.crypto import keccak256
from openledger.exceptions import ChainError, ConfigError, OpenLedgerError


def test_mined_revert_is_replayed_and_decoded(chain: Chain, protocol: Protocol) -> None:
    # An explicit gas limit skips the pre-flight, so the node mines a failed transaction.
    args = [b"\x07" * 32, chain.dev_accounts[1].address, True]
    data = bytes.fromhex(protocol.datanets._contract.encode_abi("setCurator", args=args)[2:])
    sender = chain.dev_accounts[2]
    nonce_before = chain.w3.eth.get_transaction_count(sender.address)
    with pytest.raises(ContractRevertError) as info:
        chain.send(protocol.datanets.address, data, sender=sender, gas=200_000)
    assert info.value.error_name == "UnknownDatanet"
    assert info.value.error_args == {"datanetId": "0x" + "07" * 32}
    assert chain.w3.eth.get_transaction_count(sender.address) == nonce_before + 1
    protocol.datanets.register_datanet("after-a-failed-tx", sender=sender)  # nonce still in step


def test_revert_error_is_one_type_with_builtin_bases(protocol: Protocol) -> None:
    with pytest.raises(RuntimeError) as info:
        protocol.rewards.get_epoch(3)
    assert isinstance(info.value, ContractRevertError)
    assert isinstance(info.value, ChainError)
    assert isinstance(info.value, OpenLedgerError)
    assert str(info.value) == "contract reverted: UnknownEpoch(epochId=3)"


def test_interleaved_senders_keep_their_nonces(chain: Chain, protocol: Protocol) -> None:
    a, b = chain.dev_accounts[7], chain.dev_accounts[8]
    for i in range(4):
        protocol.datanets.register_datanet(f"a{i}", sender=a)
        protocol.datanets.register_datanet(f"b{i}", sender=b)
    # A second client sending from the same account makes the first one's nonce stale.
    other = connect(chain.url) if chain.url is not None else chain
    Protocol.at(other, protocol.addresses).datanets.register_datanet("from-second-client", sender=a)
    protocol.datanets.register_datanet("a-again", sender=a)
    assert protocol.datanets.snapshot_count(protocol.datanets.datanet_id_of(a.address, "a3")) == 0


def test_estimated_gas_path_works_on_the_embedded_chain() -> None:
    chain = connect(estimate_gas=True)
    protocol = chain.deploy_protocol()
    receipt = protocol.datanets.register_datanet("estimated")
    assert 0 < receipt.gas_used < 200_000
    with pytest.raises(ContractRevertError, match="DatanetAlreadyRegistered"):
        protocol.datanets.register_datanet("estimated")


def test_receipt_wait_times_out(chain: Chain) -> None:
    with pytest.raises(TransactionTimeoutError) as info:
        chain.wait_for_receipt("0x" + "5a" * 32, timeout=0.3)
    assert isinstance(info.value, TimeoutError)


def test_protocol_at_addresses_without_code_is_refused(chain: Chain, protocol: Protocol) -> None:
    addresses = protocol.addresses.model_dump()
    assert chain.protocol(addresses).rewards.address == protocol.rewards.address
    addresses["models"] = Account.create().address
    with pytest.raises(ContractNotFoundError, match="ModelRegistry"):
        chain.protocol(addresses)


def test_unreachable_node_raises_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ChainConnectionError) as info:
        connect(f"http://127.0.0.1:{port}", request_timeout=2)
    assert isinstance(info.value, ConnectionError)


def test_unknown_selector_keeps_raw_data() -> None:
    data = bytes.fromhex("deadbeef") + bytes(32)
    error = decode_revert(data)
    assert (error.error_name, error.data) == ("0xdeadbeef", data)
    panic = decode_revert(keccak256(b"Panic(uint256)")[:4] + (0x11).to_bytes(32, "big"))
    assert (panic.error_name, panic.error_args) == ("Panic", {"code": 0x11})


def test_node_without_dev_accounts_needs_an_explicit_sender(chain: Chain) -> None:
    bare = Chain(chain.w3, backend="http")
    with pytest.raises(ConfigError, match="sender="):
        bare.send(Account.create().address, b"", value=1)
    funded = chain.default_account
    receipt = bare.fund(Account.create().address, 1, sender=funded)
    assert receipt["status"] == 1


def test_backend_exceptions_decode_to_the_same_error() -> None:
    from eth_tester.exceptions import TransactionFailed
    from web3.exceptions import ContractCustomError

    data = keccak256(b"UnknownEpoch(uint256)")[:4] + (5).to_bytes(32, "big")
    embedded = revert_error_from(TransactionFailed(f"execution reverted: {data!r}"))
    node = revert_error_from(ContractCustomError("0x" + data.hex(), data="0x" + data.hex()))
    assert embedded is not None
    assert node is not None
    assert (embedded.error_name, embedded.error_args) == ("UnknownEpoch", {"epochId": 5})
    assert (node.error_name, node.error_args, node.data) == ("UnknownEpoch", {"epochId": 5}, data)
    reason = revert_error_from(TransactionFailed("execution reverted: not allowed"))
    assert reason is not None
    assert (reason.error_name, reason.error_args) == ("Error", {"message": "not allowed"})
    assert revert_error_from(ValueError("unrelated")) is None


def test_revert_error_survives_pickling() -> None:
    error = decode_revert(keccak256(b"UnknownEpoch(uint256)")[:4] + (5).to_bytes(32, "big"))
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.error_name, copy.error_args, copy.data, str(copy)) == (
        error.error_name,
        error.error_args,
        error.data,
        str(error),
    )


def test_threads_sharing_a_chain_keep_nonces_straight(chain: Chain, protocol: Protocol) -> None:
    senders = chain.dev_accounts[1:5]

    def register(sender: Account) -> list[str]:
        names = [f"{sender.address}-{i}" for i in range(6)]
        for name in names:
            protocol.datanets.register_datanet(name, sender=sender)
        return names

    with ThreadPoolExecutor(max_workers=len(senders)) as pool:
        results = list(pool.map(register, senders))
    for sender, names in zip(senders, results, strict=True):
        for name in names:
            assert protocol.datanets.get_datanet(datanet_id(sender.address, name)).name == name
