"""Gas of every protocol write, on the embedded py-evm chain and (when installed) anvil.

    python benchmarks/chain_gas.py [--recipients 1000] [--claims 50] [--no-anvil]

Gas is deterministic for a given state, so the figures are exact, not sampled timings. The
baseline, measured in the same run, is a bare ERC-20 ``transfer`` of the same token: to a
fresh address (its balance slot goes zero -> non-zero, as in a first claim) and to an
address that already holds tokens (as in a repeat claim). Claims are reported as
first-time (recipient holds nothing, no earlier claim) and repeat (same recipient, next
epoch: the claimed-bitmap word and the token balance are already non-zero).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _machine import describe_machine  # benchmarks/ is the script folder

from openledger.chain import (
    Account,
    Chain,
    DeploymentManifest,
    FailedServiceReport,
    FlagKind,
    ModelManifest,
    Protocol,
    RewardTree,
    Support,
    connect,
)

ROOT = Path(__file__).resolve().parents[1]
ANVIL = ROOT / "contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"
DAY = 86_400


def machine() -> str:
    """Return the CPU model and core count."""
    return describe_machine()


@contextmanager
def anvil() -> Iterator[str]:
    """Run anvil on a free port; stop it by its PID."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [str(ANVIL), "--port", str(port), "--silent", "--max-persisted-states", "0"]
    )
    try:
        time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def registry_gas(chain: Chain, protocol: Protocol) -> dict[str, int]:
    """Gas of the registry writes."""
    gas: dict[str, int] = {}
    receipt = protocol.datanets.register_datanet("medqa", "0x" + "11" * 32, "0x" + "22" * 32)
    gas["register datanet"] = receipt.gas_used
    datanet = receipt.event("DatanetRegistered")["datanetId"]
    root = "0x" + "33" * 32
    publish = protocol.datanets.publish_snapshot
    gas["publish snapshot (first)"] = publish(datanet, root, 1000).gas_used
    gas["publish snapshot (next)"] = publish(datanet, root, 1000).gas_used
    owner, deadline = chain.default_account, chain.block_timestamp() + DAY
    signature = protocol.datanets.sign_publish_snapshot(owner, datanet, root, 5, deadline)
    relayed = protocol.datanets.publish_snapshot_by_sig(
        datanet, root, 5, owner.address, deadline, signature, sender=chain.dev_accounts[1]
    )
    gas["publish snapshot by EIP-712 signature (relayed)"] = relayed.gas_used
    manifest = ModelManifest(
        adapter_weights_hash="0x" + "44" * 32,
        base_model="smollm2-135m-instruct",
        recipe_hash="0x" + "55" * 32,
        datanet_roots=[root],
        training_log_root="0x" + "66" * 32,
    )
    gas["register model (1 datanet root)"] = protocol.models.register_model(manifest, 10).gas_used
    successor = chain.dev_accounts[2]
    gas["offer datanet ownership"] = protocol.datanets.transfer_datanet_ownership(
        datanet, successor.address
    ).gas_used
    gas["accept datanet ownership (curators cleared)"] = protocol.datanets.accept_datanet_ownership(
        datanet, sender=successor
    ).gas_used
    return gas


def agent_gas(chain: Chain, protocol: Protocol) -> dict[str, int]:
    """Gas of agent staking, a challenged and an unchallenged dispute, and a withdrawal."""
    agents = protocol.require_agents()
    agent, user, relayer = chain.dev_accounts[3], chain.dev_accounts[4], chain.dev_accounts[5]
    for account in (agent, user):
        protocol.token.transfer(account.address, 1_000 * 10**18)
        protocol.token.approve(agents.address, 1_000 * 10**18, sender=account)
    gas = {
        "agent: register (stake, 1 model)": agents.register(
            200 * 10**18, ["0x" + "a1" * 32], sender=agent
        ).gas_used,
        "agent: add stake": agents.add_stake(10**18, sender=agent).gas_used,
    }
    disputes = []
    for request in ("01", "02"):
        report = FailedServiceReport(
            agent=agent.address,
            model_id="0x" + "a1" * 32,
            request_hash="0x" + request * 32,
            evidence_hash="0x" + "e0" * 32,
            deadline=chain.block_timestamp() + DAY,
        )
        signature = agents.sign_report(user, report)
        receipt = agents.report(report, user.address, signature, sender=relayer)
        disputes.append(int(receipt.event("Reported")["disputeId"]))
        gas["agent: report (signed, relayed, bond pulled)"] = receipt.gas_used
    gas["agent: challenge"] = agents.challenge(disputes[0], "0x" + "c0" * 32, sender=agent).gas_used
    gas["agent: resolve upheld (slash to reporter + treasury)"] = agents.resolve(
        disputes[0], True
    ).gas_used
    chain.increase_time(agents.params().challenge_window + 60)
    gas["agent: execute slash (unchallenged)"] = agents.execute_slash(disputes[1]).gas_used
    gas["agent: begin unbonding"] = agents.begin_unbonding(10**18, sender=agent).gas_used
    chain.increase_time(agents.params().unbonding_period + 60)
    gas["agent: withdraw"] = agents.withdraw(sender=agent).gas_used
    return gas


def governance_gas(chain: Chain, protocol: Protocol) -> dict[str, int]:
    """Gas of a treasury grant from proposal to execution, and of a delegation."""
    gov = protocol.require_governance()
    alice, bob = chain.dev_accounts[6], chain.dev_accounts[7]
    tree = RewardTree({alice.address: 60 * 10**18, bob.address: 40 * 10**18})
    protocol.rewards.post_reward_tree(9, tree, chain.block_timestamp() + DAY)
    for account in (alice, bob):
        protocol.rewards.claim_from_tree(9, tree, account)
    protocol.token.transfer(gov.timelock.address, 10 * 10**18)
    chain.increase_time(60)
    grant = protocol.token.encode_call("transfer", Account.create().address, 10**18)
    proposal = gov.propose([grant], "Fund an evaluation", sender=alice)
    gas = {"governance: propose (one call)": _latest_transaction_gas(chain)}
    chain.increase_time(gov.voting_delay() + 60)
    gas["governance: vote"] = gov.vote(proposal, Support.FOR, sender=alice).gas_used
    gas["governance: vote with a reason"] = gov.vote(
        proposal, Support.AGAINST, reason="later", sender=bob
    ).gas_used
    chain.increase_time(gov.voting_period() + 60)
    gas["governance: queue in the timelock"] = gov.queue(proposal).gas_used
    chain.increase_time(gov.timelock.min_delay() + 60)
    gas["governance: execute (an OPEN grant from the treasury)"] = gov.execute(proposal).gas_used
    gas["governance: delegate votes"] = gov.votes.delegate(alice.address, sender=bob).gas_used
    return gas


def _latest_transaction_gas(chain: Chain) -> int:
    """Gas of the last transaction of the latest block (a client call that returns no receipt)."""
    last = chain.w3.eth.get_block("latest")["transactions"][-1]
    return int(chain.w3.eth.get_transaction_receipt(last)["gasUsed"])


def bond_gas(chain: Chain, protocol: Protocol) -> dict[str, int]:
    """Gas of a datanet's bond policy, a bond, a flag that slashes it, and an unbonding."""
    bonds = protocol.require_bonds()
    owner, contributor = chain.default_account, chain.dev_accounts[8]
    datanet = protocol.datanets.register_datanet("bonded").event("DatanetRegistered")["datanetId"]
    protocol.token.transfer(contributor.address, 1_000 * 10**18)
    protocol.token.approve(bonds.address, 1_000 * 10**18, sender=contributor)
    gas = {
        "bonds: set a datanet's policy": bonds.set_policy(
            datanet, 100 * 10**18, 2_000, DAY, sender=owner
        ).gas_used,
        "bonds: bond (first)": bonds.bond(datanet, 100 * 10**18, sender=contributor).gas_used,
        "bonds: bond more": bonds.bond(datanet, 10**18, sender=contributor).gas_used,
        "bonds: flag a record (penalty to the treasury)": bonds.flag(
            datanet, "0x" + "ab" * 32, contributor.address, FlagKind.DUPLICATE, "0x" + "cd" * 32
        ).gas_used,
        "bonds: begin unbonding": bonds.begin_unbonding(
            datanet, 10**18, sender=contributor
        ).gas_used,
    }
    chain.increase_time(DAY + 60)
    gas["bonds: withdraw"] = bonds.withdraw(datanet, sender=contributor).gas_used
    return gas


def deployment_gas(chain: Chain, manifest: DeploymentManifest) -> dict[str, int]:
    """Gas of the whole deployment (every creation and the timelock's setup)."""
    hashes = {r.tx_hash for r in manifest.contracts.values() if r.tx_hash}
    hashes |= {s.tx_hash for s in manifest.steps.values()}
    total = sum(int(chain.w3.eth.get_transaction_receipt(h)["gasUsed"]) for h in hashes)
    return {f"deploy the whole protocol ({len(hashes)} transactions), total": total}


def reward_gas(chain: Chain, protocol: Protocol, recipients: int, claims: int) -> dict[str, int]:
    """Gas of posting two epochs of ``recipients`` and of ``claims`` claims in each."""
    accounts = [Account.create() for _ in range(recipients)]
    first = RewardTree({a.address: 10**15 + i for i, a in enumerate(accounts)})
    second = RewardTree({a.address: 10**14 + i for i, a in enumerate(accounts)})
    deadline = chain.block_timestamp() + DAY
    protocol.token.approve(protocol.rewards.address, first.total + second.total)
    gas = {f"post epoch ({recipients} recipients, funded)": 0}
    posted = protocol.rewards.post_epoch(1, first.root, first.total, deadline)
    gas[f"post epoch ({recipients} recipients, funded)"] = posted.gas_used
    protocol.rewards.post_epoch(2, second.root, second.total, deadline)
    sample = accounts[:claims]
    claim = protocol.rewards.claim_from_tree
    relayed_first = [claim(1, first, a.address).gas_used for a in sample]
    relayed_repeat = [claim(2, second, a.address).gas_used for a in sample]
    gas["claim, first-time recipient (claimFor), median"] = int(statistics.median(relayed_first))
    gas["claim, first-time recipient (claimFor), max"] = max(relayed_first)
    gas["claim, repeat recipient (claimFor), median"] = int(statistics.median(relayed_repeat))
    gas["claim, repeat recipient (claimFor), max"] = max(relayed_repeat)
    self_claimer = accounts[-1]
    chain.fund(self_claimer.address, 10**17)
    own = protocol.rewards.claim_from_tree(1, first, self_claimer).gas_used
    gas["claim, first-time recipient (claim by the account)"] = own
    own_repeat = protocol.rewards.claim_from_tree(2, second, self_claimer).gas_used
    gas["claim, repeat recipient (claim by the account)"] = own_repeat
    chain.increase_time(DAY + 60)
    gas["sweep an expired epoch to the treasury"] = protocol.rewards.sweep(1).gas_used
    return gas


def baseline_gas(protocol: Protocol) -> dict[str, int]:
    """Gas of bare ERC-20 transfers of the same token (the floor of any token payout)."""
    fresh, holder = Account.create().address, Account.create().address
    protocol.token.transfer(holder, 1)
    return {
        "baseline: ERC-20 transfer to a fresh address": protocol.token.transfer(fresh, 5).gas_used,
        "baseline: ERC-20 transfer to a holder": protocol.token.transfer(holder, 5).gas_used,
    }


def measure(chain: Chain, recipients: int, claims: int, folder: Path) -> dict[str, int]:
    """All figures on one chain."""
    manifest = folder / f"deployment-{chain.backend}.json"
    protocol = chain.deploy_protocol(manifest=manifest)
    gas = deployment_gas(chain, DeploymentManifest.load(manifest))
    gas.update(registry_gas(chain, protocol))
    gas.update(reward_gas(chain, protocol, recipients, claims))
    gas.update(agent_gas(chain, protocol))
    gas.update(governance_gas(chain, protocol))
    gas.update(bond_gas(chain, protocol))
    gas.update(baseline_gas(protocol))
    return gas


def main() -> None:
    """Measure and print a table per backend, with claim / transfer ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=50, help="claims sampled per epoch")
    parser.add_argument("--no-anvil", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        results = {"embedded py-evm": measure(connect(), args.recipients, args.claims, folder)}
        if ANVIL.exists() and not args.no_anvil:
            with anvil() as url:
                found = measure(connect(url), args.recipients, args.claims, folder)
                results["anvil 1.7.1"] = found
    names = list(results)
    print("| operation | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for op in results[names[0]]:
        print(f"| {op} | " + " | ".join(f"{results[n][op]:,}" for n in names) + " |")
    gas = results[names[0]]
    first = gas["claim, first-time recipient (claimFor), median"]
    repeat = gas["claim, repeat recipient (claimFor), median"]
    print(
        f"ratio first-time claim / transfer to a fresh address: "
        f"{first / gas['baseline: ERC-20 transfer to a fresh address']:.2f}x; "
        f"repeat claim / transfer to a holder: "
        f"{repeat / gas['baseline: ERC-20 transfer to a holder']:.2f}x"
    )


if __name__ == "__main__":
    main()
