"""Receipt timeouts against a node that does not mine until told to (anvil --no-mining)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from openledger.chain import Account, TransactionTimeoutError, connect


def test_unmined_transaction_times_out_then_lands(
    start_anvil: Callable[..., AbstractContextManager[str]],
) -> None:
    with start_anvil("--no-mining") as url:
        chain = connect(url, receipt_timeout=0.5)
        sender, receiver = chain.dev_accounts[0], Account.create().address
        with pytest.raises(TransactionTimeoutError, match="may still be mined"):
            chain.fund(receiver, 7, sender=sender)
        assert chain.balance(receiver) == 0
        chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        assert chain.balance(receiver) == 7
        # The cached nonce was dropped on the timeout; the next send recounts and succeeds.
        with pytest.raises(TransactionTimeoutError):
            chain.fund(receiver, 5, sender=sender)
        chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        assert chain.balance(receiver) == 12
