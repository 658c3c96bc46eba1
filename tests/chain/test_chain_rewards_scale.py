"""Acceptance: an epoch of 1,000 recipients.

On anvil every one of the 1,000 accounts claims. On the embedded py-evm chain (~25 claims/s
on 2 cores) the same 1,000-leaf epoch is posted and every fifth account claims (200), which
keeps the suite within its time budget; the invariants checked are the same.
"""

from __future__ import annotations

import pytest

from openledger.chain import Account, Chain, ContractRevertError, Protocol, RewardTree

RECIPIENTS = 1000


def test_thousand_recipients_claim_exactly_once(chain: Chain, protocol: Protocol) -> None:
    accounts = [Account.create().address for _ in range(RECIPIENTS)]
    tree = RewardTree({a: 10**15 + 7 * i for i, a in enumerate(accounts)})
    spare = RewardTree({Account.create().address: 123})
    deadline = chain.block_timestamp() + 86_400
    protocol.rewards.post_reward_tree(1, tree, deadline)
    protocol.rewards.post_reward_tree(2, spare, deadline)
    step = 1 if chain.backend == "anvil" else 5
    claimers = accounts[::step]
    for account in claimers:
        protocol.rewards.claim_from_tree(1, tree, account)
    for account in claimers:
        assert protocol.token.balance_of(account) == tree.amount_of(account)
    for account in claimers[:: max(1, len(claimers) // 10)]:  # ~10 second claims, spread out
        with pytest.raises(ContractRevertError) as info:
            protocol.rewards.claim_from_tree(1, tree, account)
        assert info.value.error_name == "AlreadyClaimed"
    unclaimed = tree.total - sum(tree.amount_of(a) for a in claimers)
    assert protocol.rewards.get_epoch(1).remaining == unclaimed
    held = protocol.token.balance_of(protocol.rewards.address)
    assert held == unclaimed + spare.total
