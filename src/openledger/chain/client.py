"""The EVM client: one :class:`Chain` over an embedded py-evm chain or a JSON-RPC node.

``connect()`` with no URL starts an in-process chain (web3's ``EthereumTesterProvider`` on
py-evm) with ten funded dev accounts; ``connect("http://127.0.0.1:8545")`` talks to any EVM
JSON-RPC node, and recognises anvil to offer its funded dev accounts too.

Every transaction is signed locally with an :class:`~openledger.crypto.Account`:

    nonce (tracked per sender) -> gas (estimate, or a reverting pre-flight call) -> fees
    -> sign -> send -> wait for the receipt (timeout) -> status 0 is replayed to decode why

Reverts are raised as :class:`~openledger.exceptions.ContractRevertError` on every backend.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from eth_typing import ChecksumAddress
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.exceptions import TimeExhausted, TransactionNotFound
from web3.types import Nonce, RPCEndpoint, RPCResponse, TxParams, TxReceipt
from web3.types import Wei as Web3Wei

from openledger.chain._artifacts import load_artifact
from openledger.chain.errors import decode_revert, revert_error_from
from openledger.crypto import Account, to_checksum_address
from openledger.exceptions import (
    ChainConnectionError,
    ConfigError,
    ContractNotFoundError,
    ContractRevertError,
    TransactionTimeoutError,
)
from openledger.types import Address, Hash32, Wei, to_hash32, to_wei

if TYPE_CHECKING:
    from eth_tester import EthereumTester

    from openledger.chain.agents import AgentParams
    from openledger.chain.deployment import DeploymentManifest
    from openledger.chain.governance import GovernanceParams
    from openledger.chain.protocol import Protocol, ProtocolAddresses

__all__ = ["ANVIL_MNEMONIC", "Backend", "Chain", "SignedTransaction", "connect"]

Backend = Literal["embedded", "anvil", "http"]
"""Which kind of node a :class:`Chain` talks to."""

ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
"""The mnemonic anvil derives its funded dev accounts from (unless started with another)."""

_T = TypeVar("_T")
_GAS_MARGIN = 1.2
_PREFLIGHT_GAS = 10_000_000
_TIP_WEI = 10**9


def _cs(address: str) -> ChecksumAddress:
    return cast(ChecksumAddress, to_checksum_address(address))


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    """A transaction signed and about to be sent (``Chain.send(on_signed=...)`` sees it).

    Attributes:
        tx_hash: Its hash, known before it is sent.
        sender: The signing account.
        nonce: Its nonce.
        raw: The signed bytes, which can be sent again if the node forgets it.
    """

    tx_hash: Hash32
    sender: Address
    nonce: int
    raw: bytes


class _Nonces:
    """Next nonce per sender, fetched once from the node and then counted locally."""

    def __init__(self, fetch: Callable[[Address], int]) -> None:
        self._fetch = fetch
        self._next: dict[Address, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def reserve(self, address: Address) -> Iterator[int]:
        """Yield the sender's next nonce; it is used up only if the block exits cleanly."""
        with self._lock:
            nonce = self._next.get(address)
            if nonce is None:
                nonce = self._fetch(address)
            try:
                yield nonce
            except BaseException:
                # NOTE: the node's view is the truth after any failed send; refetch next time.
                self._next.pop(address, None)
                raise
            self._next[address] = nonce + 1

    def forget(self, address: Address) -> None:
        """Drop the cached nonce so the next send asks the node again."""
        with self._lock:
            self._next.pop(address, None)


class Chain:
    """A connection to an EVM chain with local signing and decoded reverts.

    Build one with :func:`connect`. Attributes are read-only after construction.

    Attributes:
        w3: The underlying web3 instance (for anything this class does not cover).
        backend: ``"embedded"``, ``"anvil"`` or ``"http"``.
        dev_accounts: Funded accounts whose keys are known (embedded and anvil only).
        receipt_timeout: Seconds to wait for a receipt before
            :class:`~openledger.exceptions.TransactionTimeoutError`.
        estimate_gas: Whether gas limits come from ``eth_estimateGas`` (else from a
            pre-flight ``eth_call`` and a fixed limit).
        url: The JSON-RPC URL, ``None`` for the embedded chain.
    """

    def __init__(
        self,
        w3: Web3,
        *,
        backend: Backend,
        dev_accounts: tuple[Account, ...] = (),
        tester: EthereumTester | None = None,
        receipt_timeout: float = 120.0,
        estimate_gas: bool = True,
        url: str | None = None,
    ) -> None:
        self.w3 = w3
        self.url = url
        self.backend: Backend = backend
        self.dev_accounts = dev_accounts
        self.receipt_timeout = receipt_timeout
        self.estimate_gas = estimate_gas
        self._tester = tester
        self._chain_id = int(w3.eth.chain_id)
        # NOTE: web3's validation middleware asks the node for eth_chainId before every
        # call and estimate; transactions here are signed locally with the id read once.
        if "validation" in {name for _, name in w3.middleware_onion.middleware}:
            w3.middleware_onion.remove("validation")
        self._nonces = _Nonces(lambda a: int(w3.eth.get_transaction_count(_cs(a), "pending")))

    def __repr__(self) -> str:
        return f"Chain(backend={self.backend!r}, chain_id={self._chain_id})"

    @property
    def chain_id(self) -> int:
        """The EIP-155 chain id."""
        return self._chain_id

    @property
    def default_account(self) -> Account:
        """The first dev account, used when no sender is given.

        Raises:
            ConfigError: On a node without known dev accounts.
        """
        if not self.dev_accounts:
            raise ConfigError("this chain has no dev accounts; pass sender=Account.from_key(...)")
        return self.dev_accounts[0]

    def block_timestamp(self) -> int:
        """Return the timestamp of the latest block (seconds)."""
        return int(self._rpc(self.w3.eth.get_block, "latest")["timestamp"])

    def block_number(self) -> int:
        """Return the number of the latest block (where a window of logs starts, say)."""
        return int(self._rpc(lambda: self.w3.eth.block_number))

    def balance(self, address: str) -> Wei:
        """Return the native-coin balance of ``address`` in wei."""
        return Wei(int(self._rpc(self.w3.eth.get_balance, _cs(address))))

    def code_at(self, address: str) -> bytes:
        """Return the runtime code at ``address`` (empty for an account without code)."""
        return bytes(self._rpc(self.w3.eth.get_code, _cs(address)))

    def call(self, to: str, data: bytes, *, sender: str | None = None) -> bytes:
        """Run ``eth_call`` and return the raw output.

        Raises:
            ContractRevertError: If the call reverts.
        """
        params: TxParams = {"to": _cs(to), "data": data}
        if sender is not None:
            params["from"] = _cs(sender)
        return bytes(self._rpc(self.w3.eth.call, params))

    def send(
        self,
        to: str | None,
        data: bytes,
        *,
        sender: Account | None = None,
        value: int = 0,
        gas: int | None = None,
        extra_gas: int = 0,
        on_signed: Callable[[SignedTransaction], None] | None = None,
    ) -> TxReceipt:
        """Sign and send a transaction, wait for its receipt, and check it succeeded.

        Args:
            to: The recipient (``None`` deploys ``data`` as creation code).
            data: Calldata or creation code.
            sender: The signing account (default :attr:`default_account`).
            value: Native coin to send, in wei.
            gas: A gas limit; estimated (or pre-flighted) when ``None``.
            extra_gas: Added to an estimate, for costs the estimate cannot see (e.g. a
                vote checkpoint that the next block's timestamp makes a new slot).
            on_signed: Called with the signed transaction before it is sent (e.g. to
                journal its hash, so a crashed caller can find it again).

        Returns:
            The successful receipt.

        Raises:
            ContractRevertError: If the transaction would revert or reverted.
            TransactionTimeoutError: If no receipt came within :attr:`receipt_timeout`.
        """
        account = sender or self.default_account
        tx: TxParams = {"from": _cs(account.address), "data": data, "value": Web3Wei(to_wei(value))}
        if to is not None:
            tx["to"] = _cs(to)
        tx["gas"] = gas if gas is not None else self._gas_limit(tx, extra_gas)
        tx.update(self._fees())
        tx["chainId"] = self._chain_id
        try:
            tx_hash = self._sign_and_send(account, tx, on_signed)
        except ContractRevertError:
            raise
        except Exception as exc:  # web3 and eth-tester word a stale nonce differently
            if "nonce" not in str(exc).lower():
                raise
            # NOTE: another client sent from this account; the cached nonce was dropped,
            # so one retry picks up the node's count.
            tx_hash = self._sign_and_send(account, tx, on_signed)
        try:
            receipt = self.wait_for_receipt(tx_hash)
        except TransactionTimeoutError:
            # NOTE: the transaction may have been dropped; recount rather than leave a gap.
            self._nonces.forget(account.address)
            raise
        return self.check_receipt(receipt, tx)

    def check_receipt(self, receipt: TxReceipt, tx: TxParams | None = None) -> TxReceipt:
        """Return ``receipt`` if its transaction succeeded.

        Raises:
            ContractRevertError: If it reverted (decoded by replaying ``tx``, or the mined
                transaction when ``tx`` is ``None``).
        """
        if receipt["status"] == 1:
            return receipt
        if tx is None:
            mined = self._rpc(self.w3.eth.get_transaction, receipt["transactionHash"])
            tx = {"from": mined["from"], "data": mined["input"], "gas": mined["gas"]}
            tx["value"] = mined["value"]
            if mined.get("to"):
                tx["to"] = mined["to"]
        raise self._replay_revert(tx, int(receipt["blockNumber"]))

    def find_receipt(self, tx_hash: str) -> TxReceipt | None:
        """Return the receipt of a mined transaction, or ``None`` if it is not mined (yet)."""
        try:
            return self._rpc(self.w3.eth.get_transaction_receipt, cast(Any, tx_hash))
        except TransactionNotFound:
            return None

    def is_pending(self, tx_hash: str) -> bool:
        """Return whether the node knows ``tx_hash`` (in its pool or mined)."""
        try:
            self._rpc(self.w3.eth.get_transaction, cast(Any, tx_hash))
        except TransactionNotFound:
            return False
        return True

    def send_raw(self, raw: bytes) -> Hash32:
        """Send an already signed transaction (e.g. again, after the node dropped it)."""
        return to_hash32(bytes(self._rpc(self.w3.eth.send_raw_transaction, raw)))

    def nonce_of(self, address: str, block: Literal["latest", "pending"] = "latest") -> int:
        """Return how many transactions ``address`` has sent as of ``block``."""
        return int(self._rpc(self.w3.eth.get_transaction_count, _cs(address), block))

    def wait_for_receipt(self, tx_hash: str, timeout: float | None = None) -> TxReceipt:
        """Wait for a transaction's receipt.

        Raises:
            TransactionTimeoutError: If none arrives within ``timeout`` (default
                :attr:`receipt_timeout`) seconds.
        """
        limit = self.receipt_timeout if timeout is None else timeout
        try:
            return self.w3.eth.wait_for_transaction_receipt(
                cast(Any, tx_hash), timeout=limit, poll_latency=0.05
            )
        except TimeExhausted as exc:
            raise TransactionTimeoutError(
                f"no receipt for {tx_hash} after {limit:g} s; it may still be mined, "
                "check later with wait_for_receipt()"
            ) from exc

    def deploy(self, name: str, *args: Any, sender: Account | None = None) -> Address:
        """Deploy a shipped contract and return its address.

        Args:
            name: The contract name (see ``CONTRACT_NAMES``).
            *args: Constructor arguments.
            sender: The deployer (default :attr:`default_account`).
        """
        receipt = self.send(None, self.creation_code(name, *args), sender=sender)
        return Address(to_checksum_address(str(receipt["contractAddress"])))

    def creation_code(self, name: str, *args: Any) -> bytes:
        """Return the creation code of a shipped contract with its constructor arguments."""
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        return bytes.fromhex(factory.constructor(*args).data_in_transaction[2:])

    def require_code(self, address: str, what: str) -> Address:
        """Return ``address`` checksummed if it holds contract code.

        Raises:
            ContractNotFoundError: If there is no code there on this chain.
        """
        checked = Address(to_checksum_address(address))
        if not self.code_at(checked):
            raise ContractNotFoundError(
                f"no contract code for {what} at {checked} on chain {self._chain_id}; "
                "check the address and the network"
            )
        return checked

    def fund(self, address: str, amount: int, *, sender: Account | None = None) -> TxReceipt:
        """Send ``amount`` wei of the native coin to ``address`` (for gas)."""
        return self.send(to_checksum_address(address), b"", sender=sender, value=amount, gas=21_000)

    def increase_time(self, seconds: int) -> None:
        """Move the chain's clock forward and mine a block (embedded and anvil only).

        Raises:
            ConfigError: On a node that is not a dev chain.
        """
        if self._tester is not None:
            # NOTE: eth-tester mines the travelling block one second before its target.
            self._tester.time_travel(self.block_timestamp() + seconds + 1)
        elif self.backend == "anvil":
            self.w3.provider.make_request(cast(Any, "evm_increaseTime"), [seconds])
            self.w3.provider.make_request(cast(Any, "evm_mine"), [])
        else:
            raise ConfigError("increase_time() needs the embedded chain or anvil")

    def deploy_protocol(
        self,
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
        """Deploy the whole protocol: registries, rewards and their votes, agents, data
        bonds, the governor and its timelock, and (unless given) an OpenToken.

        See :func:`openledger.chain.protocol.deploy_protocol` for the arguments; ``None``
        keeps its defaults.
        """
        from openledger.chain.protocol import deploy_protocol

        return deploy_protocol(
            self,
            admin=admin,
            token=token,
            initial_supply=initial_supply,
            supply_cap=supply_cap,
            treasury=treasury,
            min_claim_window=min_claim_window,
            agent_params=agent_params,
            governance=governance,
            max_bond_slash_bps=max_bond_slash_bps,
            governed=governed,
            manifest=manifest,
        )

    def protocol(
        self, addresses: ProtocolAddresses | dict[str, str] | DeploymentManifest | str | Path
    ) -> Protocol:
        """Bind typed clients to already deployed contracts (code is checked at each address).

        Args:
            addresses: The addresses (a :class:`ProtocolAddresses` or its dict), a
                :class:`~openledger.chain.DeploymentManifest`, or the path of a manifest
                file written by ``openledger chain deploy``.
        """
        from openledger.chain.protocol import Protocol

        if isinstance(addresses, (str, Path)):
            return Protocol.from_manifest(self, addresses)
        return Protocol.at(self, addresses)

    def _sign_and_send(
        self,
        account: Account,
        tx: TxParams,
        on_signed: Callable[[SignedTransaction], None] | None = None,
    ) -> str:
        with self._nonces.reserve(account.address) as nonce:
            tx["nonce"] = Nonce(nonce)
            signed = account.local_account.sign_transaction(cast(dict[str, Any], tx))
            if on_signed is not None:
                tx_hash = to_hash32(bytes(signed.hash))
                raw = signed.raw_transaction
                on_signed(SignedTransaction(tx_hash, account.address, nonce, raw))
            return self._rpc(self.w3.eth.send_raw_transaction, signed.raw_transaction).to_0x_hex()

    def _gas_limit(self, tx: TxParams, extra_gas: int = 0) -> int:
        if self.estimate_gas:
            return int(self._rpc(self.w3.eth.estimate_gas, tx) * _GAS_MARGIN) + extra_gas
        # NOTE: py-evm's eth_estimateGas is a binary search (~7 executions); a single
        # eth_call still surfaces the revert, and unused gas costs nothing on a dev chain.
        self._rpc(self.w3.eth.call, tx)
        return _PREFLIGHT_GAS

    def _fees(self) -> TxParams:
        base = int(self._rpc(self.w3.eth.get_block, "latest").get("baseFeePerGas", 0))
        tip = _TIP_WEI if self._tester is not None else self._node_tip()
        return {
            "maxFeePerGas": Web3Wei(2 * base + tip),
            "maxPriorityFeePerGas": Web3Wei(tip),
        }

    def _node_tip(self) -> int:
        """The node's suggested priority fee (``eth_maxPriorityFeePerGas``), else 1 gwei."""
        try:
            return int(self._rpc(lambda: self.w3.eth.max_priority_fee))
        except ChainConnectionError:
            raise
        except Exception:  # nodes without the method answer "method not found"
            return _TIP_WEI

    def _replay_revert(self, tx: TxParams, block_number: int) -> ContractRevertError:
        replay = {k: v for k, v in tx.items() if k in ("from", "to", "data", "value", "gas")}
        try:
            self.w3.eth.call(cast(TxParams, replay), max(block_number - 1, 0))
        except Exception as exc:  # the backend's own revert type, decoded below
            decoded = revert_error_from(exc)
            if decoded is not None:
                return decoded
        return decode_revert(b"")

    def _rpc(self, func: Callable[..., _T], *args: Any) -> _T:
        try:
            return func(*args)
        except (OSError, ConnectionError) as exc:
            raise ChainConnectionError(f"the chain node did not answer: {exc}") from exc
        except Exception as exc:  # reverts come as several unrelated backend types
            decoded = revert_error_from(exc)
            if decoded is None:
                raise
            raise decoded from exc


class _SerialTesterProvider(EthereumTesterProvider):
    """eth-tester's provider with one request at a time: py-evm is not thread-safe."""

    def __init__(self, tester: EthereumTester) -> None:
        super().__init__(tester)
        self._request_lock = threading.RLock()

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        with self._request_lock:
            return super().make_request(method, params)


def _embedded(receipt_timeout: float, estimate_gas: bool) -> Chain:
    from eth_tester import EthereumTester, PyEVMBackend

    tester = EthereumTester(PyEVMBackend())
    keys = tester.backend.account_keys
    accounts = tuple(Account.from_key(k.to_bytes()) for k in keys)
    w3 = Web3(_SerialTesterProvider(tester))
    return Chain(
        w3,
        backend="embedded",
        dev_accounts=accounts,
        tester=tester,
        receipt_timeout=receipt_timeout,
        estimate_gas=estimate_gas,
    )


def _anvil_accounts(w3: Web3) -> tuple[Account, ...]:
    from eth_account import Account as EthAccount

    EthAccount.enable_unaudited_hdwallet_features()
    node_accounts = set(w3.eth.accounts)
    derived = []
    for i in range(10):
        local = EthAccount.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        if local.address in node_accounts:
            derived.append(Account(local))
    return tuple(derived)


def connect(
    url: str | None = None,
    *,
    receipt_timeout: float = 120.0,
    estimate_gas: bool | None = None,
    request_timeout: float = 30.0,
) -> Chain:
    """Connect to an EVM chain.

    Args:
        url: ``None`` for a fresh in-process py-evm chain; else an HTTP(S) JSON-RPC URL.
        receipt_timeout: Seconds to wait for each transaction's receipt.
        estimate_gas: Use ``eth_estimateGas`` for gas limits; default ``True`` for nodes and
            ``False`` on the embedded chain (where a pre-flight ``eth_call`` catches reverts
            ~7x faster and a fixed 10M limit is used).
        request_timeout: Seconds per JSON-RPC request.

    Returns:
        The connected :class:`Chain`.

    Raises:
        ChainConnectionError: If the node cannot be reached.
    """
    if url is None:
        return _embedded(receipt_timeout, bool(estimate_gas))
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": request_timeout}))
    try:
        version = str(w3.client_version)
    except Exception as exc:  # requests' and web3's errors for refused or bad endpoints
        raise ChainConnectionError(f"cannot reach a JSON-RPC node at {url}: {exc}") from exc
    is_anvil = version.lower().startswith("anvil")
    return Chain(
        w3,
        backend="anvil" if is_anvil else "http",
        dev_accounts=_anvil_accounts(w3) if is_anvil else (),
        receipt_timeout=receipt_timeout,
        estimate_gas=True if estimate_gas is None else estimate_gas,
        url=url,
    )
