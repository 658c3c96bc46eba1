"""OPEN on an OP Stack L2: the standard bridge is the only minter, and the bridged token pays
rewards like OpenToken does."""

from __future__ import annotations

from typing import Any

import pytest

from openledger.chain import Account, Chain, ContractRevertError, RewardTree, load_artifact
from openledger.crypto import from_hex

OPEN = 10**18
OPTIMISM_MINTABLE = "0xec4fc8e3"  # type(IOptimismMintableERC20).interfaceId
LEGACY_MINTABLE = "0x1d1d8b63"  # type(ILegacyMintableERC20).interfaceId


def _l2(
    chain: Chain, address: str, function: str, *args: Any, sender: Account | None = None
) -> Any:
    contract = chain.w3.eth.contract(abi=load_artifact("OpenTokenL2").abi)
    data = bytes.fromhex(contract.encode_abi(function, args=list(args))[2:])
    if sender is not None:
        return chain.send(address, data, sender=sender)
    return chain.call(address, data)


def test_the_bridge_mints_the_l2_token_and_it_pays_rewards(chain: Chain) -> None:
    bridge, l1_token = chain.dev_accounts[5], Account.create().address
    token = chain.deploy("OpenTokenL2", bridge.address, l1_token)
    for interface in (OPTIMISM_MINTABLE, LEGACY_MINTABLE):
        assert _l2(chain, token, "supportsInterface", from_hex(interface, size=4))[-1] == 1
    assert _l2(chain, token, "remoteToken")[-20:] == from_hex(l1_token)
    deployer = chain.default_account
    with pytest.raises(ContractRevertError) as info:
        _l2(chain, token, "mint", deployer.address, OPEN, sender=deployer)
    assert info.value.error_name == "NotBridge"
    _l2(chain, token, "mint", deployer.address, 1_000 * OPEN, sender=bridge)  # a deposit

    protocol = chain.deploy_protocol(token=token)
    alice = Account.create()
    tree = RewardTree({alice.address: 10 * OPEN})
    protocol.rewards.post_reward_tree(1, tree, chain.block_timestamp() + 86_400)
    protocol.rewards.claim_from_tree(1, tree, alice.address)
    assert protocol.token.balance_of(alice.address) == 10 * OPEN
    assert protocol.require_governance().get_votes(alice.address) == 10 * OPEN
