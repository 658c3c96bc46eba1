"""The off-chain encodings against the contracts' own pure functions (embedded chain)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openledger.chain import (
    ModelManifest,
    Protocol,
    connect,
    datanet_id,
    manifest_hash,
    model_id,
    record_leaf,
    reward_leaf,
)
from openledger.crypto import to_checksum_address

addresses = st.binary(min_size=20, max_size=20).map(to_checksum_address)
hashes = st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex())
names = st.text(min_size=1, max_size=30)


@pytest.fixture(scope="module")
def deployed() -> Protocol:
    return connect().deploy_protocol()


@settings(max_examples=25, deadline=None)
@given(hashes, names, hashes, st.lists(hashes, max_size=4), hashes)
def test_model_id_matches_model_id_of(
    deployed: Protocol, weights: str, base: str, recipe: str, roots: list[str], log: str
) -> None:
    manifest = ModelManifest(
        adapter_weights_hash=weights,
        base_model=base,
        recipe_hash=recipe,
        datanet_roots=roots,
        training_log_root=log,
    )
    registrant = deployed.chain.default_account.address
    assert deployed.models.model_id_of(manifest, registrant) == model_id(manifest, registrant)
    assert deployed.models.manifest_hash_of(manifest) == manifest_hash(manifest)


@settings(max_examples=25, deadline=None)
@given(addresses, names, hashes, st.integers(0, 2**256 - 1))
def test_ids_and_leaves_match_the_contracts(
    deployed: Protocol, who: str, name: str, digest: str, amount: int
) -> None:
    datanets, rewards = deployed.datanets, deployed.rewards
    assert "0x" + datanets._call("datanetIdOf", who, name).hex() == datanet_id(who, name)
    raw = bytes.fromhex(digest[2:])
    assert "0x" + datanets._call("recordLeaf", raw, who).hex() == record_leaf(digest, who)
    assert "0x" + rewards._call("rewardLeaf", who, amount).hex() == reward_leaf(who, amount)
