"""split_rewards: exact sums, largest remainder, order independence, fees, negative influence."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openledger.attribution import (
    SHARE_UNITS,
    AttributionReport,
    RecordScore,
    RewardPolicy,
    largest_remainder,
    split_rewards,
)
from openledger.crypto import to_checksum_address
from openledger.exceptions import AttributionInputError
from openledger.types import Address, Hash32

ROOT = Hash32("0x" + "ab" * 32)


def address(number: int) -> Address:
    return to_checksum_address("0x" + f"{number + 1:040x}")


def report(scores: dict[int, list[float]]) -> AttributionReport:
    """A report whose contributor ``k`` has records with ``scores[k]``."""
    records = tuple(
        RecordScore(Hash32("0x" + f"{k:032x}{j:032x}"), address(k), s, f"record {k}.{j}")
        for k, values in scores.items()
        for j, s in enumerate(values)
    )
    return AttributionReport("exact", ROOT, ROOT, None, "q", "a", records)


def test_three_equal_contributors_split_ten_wei_with_the_extra_to_the_lowest_address() -> None:
    split = split_rewards([report({0: [1.0], 1: [1.0], 2: [1.0]})], 10)
    assert split.contributors == {address(0): 4, address(1): 3, address(2): 3}


def test_largest_remainder_gives_leftovers_to_the_largest_fractions() -> None:
    # 100 * (1, 2, 7) / 10 = 10, 20, 70 exactly; 101 leaves 1 wei: remainders 1, 2, 7 -> third.
    found = largest_remainder({address(0): 1, address(1): 2, address(2): 7}, 101)
    assert found == {address(0): 10, address(1): 20, address(2): 71}


def test_fees_are_floored_basis_points_and_contributors_get_the_rest() -> None:
    policy = RewardPolicy(
        developer_bps=1_500, protocol_bps=250, developer=address(90), protocol=address(91)
    )
    split = split_rewards([report({0: [2.0], 1: [1.0]})], 1_001, policy)
    assert (split.developer, split.protocol) == (150, 25)
    assert sum(split.contributors.values()) == 1_001 - 150 - 25
    assert sum(split.payouts.values()) == 1_001
    assert split.payouts[address(90)] == 150


def test_negative_influence_never_pays_and_feeds_reputation() -> None:
    split = split_rewards([report({0: [3.0, -1.0], 1: [-0.5, -0.25], 2: [1.0]})], 1_000)
    assert address(1) not in split.contributors
    assert split.reputation == {address(1): pytest.approx(-0.75)}
    assert split.contributors == {address(0): 667, address(2): 333}


def test_a_developer_who_also_contributed_gets_one_merged_payout() -> None:
    policy = RewardPolicy(developer_bps=5_000, developer=address(0))
    split = split_rewards([report({0: [1.0], 1: [1.0]})], 100, policy)
    assert split.payouts == {address(0): 75, address(1): 25}


def test_a_split_renders_as_an_html_table_of_payees_roles_and_total() -> None:
    policy = RewardPolicy(
        developer_bps=5_000, developer=address(0), protocol_bps=1_000, protocol=address(9)
    )
    split = split_rewards([report({0: [1.0], 1: [3.0]})], 100, policy)
    page = split._repr_html_()
    assert page.count("<tr>") == 1 + len(split.payouts) + 1
    assert f"<code>{address(0)}</code></td><td>contributor, developer</td>" in page
    assert f"<code>{address(9)}</code></td><td>protocol</td>" in page
    assert "<b>100</b>" in page
    assert page.index(address(0)) < page.index(address(1))  # largest payout first


def test_bond_penalties_are_reported_beside_the_payouts_and_never_change_them() -> None:
    usages = [report({0: [1.0], 1: [3.0]})]
    plain = split_rewards(usages, 100)
    slashed = {address(1).lower(): 7 * 10**18, address(5): 10**18, address(6): 0}
    split = split_rewards(usages, 100, bond_penalties=slashed)
    assert split.payouts == plain.payouts  # the slash already took them from the bond
    assert split.bond_penalties == {address(1): 7 * 10**18, address(5): 10**18}
    page = split._repr_html_()
    assert "<th>bond slashed (wei)</th>" in page
    # the flagged contributor who earned nothing this epoch is listed, with its penalty
    assert f"<code>{address(5)}</code></td><td>flagged contributor</td>" in page
    assert str(8 * 10**18) in page  # the column's total
    assert "bond slashed" not in plain._repr_html_()


@pytest.mark.parametrize("amount", [-1, 1.5, True, "7"])
def test_a_bond_penalty_that_is_not_a_non_negative_int_is_refused(amount: object) -> None:
    with pytest.raises(AttributionInputError, match="bond penalty of"):
        split_rewards([report({0: [1.0]})], 10, bond_penalties={address(0): amount})  # type: ignore[dict-item]


def test_fees_that_take_the_whole_pool_still_list_the_contributors_at_zero() -> None:
    policy = RewardPolicy(developer_bps=10_000, developer=address(99))
    split = split_rewards([report({0: [1.0], 1: [2.0]})], 1, policy)
    assert split.contributors == {address(0): 0, address(1): 0}
    assert split.payouts == {address(99): 1}


weights = st.dictionaries(
    st.integers(0, 30), st.lists(st.floats(-5, 5), min_size=1, max_size=3), min_size=1, max_size=8
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(weights, min_size=1, max_size=4),
    st.integers(1, 10**24),
    st.integers(0, 10_000),
    st.randoms(use_true_random=False),
)
def test_payouts_sum_to_the_pool_in_any_order(
    groups: list[dict[int, list[float]]], pool: int, bps: int, rng: random.Random
) -> None:
    reports = [report(g) for g in groups]
    if not any(r.contributor_weights() for r in reports):
        with pytest.raises(AttributionInputError):
            split_rewards(reports, pool)
        return
    policy = RewardPolicy(developer_bps=bps, developer=address(99))
    split = split_rewards(reports, pool, policy)
    assert sum(split.payouts.values()) == pool
    assert all(v > 0 for v in split.payouts.values())
    shuffled = [report(dict(rng.sample(list(g.items()), len(g)))) for g in groups]
    rng.shuffle(shuffled)
    again = split_rewards(shuffled, pool, policy)
    assert again.payouts == split.payouts
    assert again.reputation == split.reputation
    ever_positive = {a for r in reports for a in r.contributor_weights()}
    assert set(split.contributors) == ever_positive


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(st.integers(0, 50), st.integers(1, 10**12), min_size=1, max_size=10),
    st.integers(0, 10**30),
)
def test_largest_remainder_is_within_one_wei_of_the_exact_share(
    raw: dict[int, int], amount: int
) -> None:
    found = largest_remainder({address(k): w for k, w in raw.items()}, amount)
    total = sum(raw.values())
    assert sum(found.values()) == amount
    for k, w in raw.items():
        exact = amount * w / total
        assert abs(found[address(k)] - exact) < 1 + 1e-9 * exact


def test_report_weights_are_quantised_shares() -> None:
    found = report({0: [1.0], 1: [3.0], 2: [-2.0]}).contributor_weights()
    assert found == {address(0): SHARE_UNITS // 4, address(1): 3 * SHARE_UNITS // 4}


@pytest.mark.parametrize("pool", [0, -1, 1.5, True, "10"])
def test_a_pool_that_is_not_a_positive_int_is_refused(pool: object) -> None:
    with pytest.raises(AttributionInputError, match="pool_wei"):
        split_rewards([report({0: [1.0]})], pool)  # type: ignore[arg-type]


def test_no_reports_or_no_positive_share_is_refused() -> None:
    with pytest.raises(AttributionInputError, match="no reports"):
        split_rewards([], 10)
    with pytest.raises(AttributionInputError, match="positive share"):
        split_rewards([report({0: [-1.0]})], 10)


@pytest.mark.parametrize(
    "fields",
    [
        {
            "developer_bps": 6_000,
            "protocol_bps": 5_000,
            "developer": "0x" + "11" * 20,
            "protocol": "0x" + "22" * 20,
        },
        {"developer_bps": 10},
        {"protocol_bps": -1},
    ],
)
def test_bad_policies_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(AttributionInputError, match="reward policy"):
        RewardPolicy(**fields)
