"""Resumable deployments: a manifest journals every transaction, so a deployment killed at
any point and run again ends as one complete deployment, never two."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from openledger.chain import (
    Account,
    Chain,
    DeploymentManifest,
    Protocol,
    connect,
)
from openledger.exceptions import ConfigError

CREATIONS = 8  # timelock, token, datanets, models, rewards (+ its votes), agents, bonds, governor
TRANSACTIONS = CREATIONS + 3  # the timelock's setup: proposer, canceller, admin renounced


def _creations(chain: Chain, deployer: str, first_block: int) -> int:
    """Contract-creation transactions sent by ``deployer`` from ``first_block`` on."""
    count = 0
    for number in range(first_block, chain.w3.eth.block_number + 1):
        block = chain.w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            assert not isinstance(tx, bytes)
            count += tx["from"] == deployer and not tx.get("to")
    return count


def _wait_for(
    path: Path, ready: Callable[[dict[str, object]], bool], process: subprocess.Popen[str]
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the deployment finished before it could be interrupted"
        try:
            if ready(json.loads(path.read_text())):
                return
        except (OSError, json.JSONDecodeError):
            pass  # not written yet
        time.sleep(0.01)
    raise AssertionError("the manifest never reached the awaited state")


def test_deploy_killed_midway_and_rerun_ends_as_one_deployment(
    start_anvil: Callable[..., AbstractContextManager[str]], tmp_path: Path
) -> None:
    # NOTE: a block every 0.3 s keeps each transaction pending long enough to kill the
    #       command between journaling one and seeing it mined.
    with start_anvil("--block-time", "0.3") as url:
        chain = connect(url)
        deployer = chain.dev_accounts[0]
        manifest = tmp_path / "deployment.json"
        env = {**os.environ, "DEPLOYER_KEY": "0x" + deployer.key.hex()}
        command = [
            sys.executable, "-m", "openledger.cli", "chain", "deploy", "--rpc-url", url,
            "--private-key-env", "DEPLOYER_KEY", "--manifest", str(manifest),
        ]  # fmt: skip
        first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        try:
            _wait_for(manifest, lambda m: bool(m["contracts"]) and bool(m["pending"]), first)
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate()
        partial = DeploymentManifest.load(manifest)
        assert not partial.complete
        assert partial.pending is not None
        assert 1 <= len(partial.contracts) < CREATIONS

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert second.returncode == 0, second.stderr[-3000:]
        assert json.loads(second.stdout)["resumed"] is True
        done = DeploymentManifest.load(manifest)
        assert done.complete
        assert done.pending is None
        assert done.chain_id == chain.chain_id
        assert chain.nonce_of(deployer.address) == TRANSACTIONS
        assert done.deployment_block is not None
        assert _creations(chain, deployer.address, 0) == CREATIONS
        assert {r.address for r in done.contracts.values()} == set(
            json.loads(second.stdout)["contracts"].values()
        )

        protocol = chain.protocol(manifest)
        timelock = protocol.require_governance().timelock.address
        assert protocol.rewards.default_admin() == timelock  # governed unless --keep-admin
        assert protocol.rewards.treasury() == timelock
        third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert third.returncode == 0, third.stderr[-3000:]
        assert chain.nonce_of(deployer.address) == TRANSACTIONS  # nothing sent again


class _Crash(Exception):
    """Stands for the process dying between journaling a transaction and sending it."""


def test_a_journaled_transaction_that_never_left_is_sent_once_on_rerun(
    chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployer = Account.create()
    chain.fund(deployer.address, 10**19)
    manifest = tmp_path / "deployment.json"
    send = chain.w3.eth.send_raw_transaction
    sent: list[bytes] = []

    def send_until_the_third(raw: bytes) -> object:
        if len(sent) == 2:
            raise _Crash
        sent.append(raw)
        return send(raw)

    monkeypatch.setattr(chain.w3.eth, "send_raw_transaction", send_until_the_third)
    with pytest.raises(_Crash):
        chain.deploy_protocol(admin=deployer, manifest=manifest)
    journaled = DeploymentManifest.load(manifest)
    assert journaled.pending is not None
    assert journaled.pending.step == "datanets"
    assert len(journaled.contracts) == 2
    monkeypatch.setattr(chain.w3.eth, "send_raw_transaction", send)

    protocol = chain.deploy_protocol(admin=deployer, manifest=manifest)
    done = DeploymentManifest.load(manifest)
    assert done.complete
    assert done.contracts["datanets"].tx_hash == journaled.pending.tx_hash  # the same bytes
    assert chain.nonce_of(deployer.address) == TRANSACTIONS
    assert done.deployment_block is not None
    assert _creations(chain, deployer.address, done.deployment_block) == CREATIONS
    assert protocol.addresses == done.addresses()
    assert Protocol.at(chain, json.loads(manifest.read_text())).addresses == done.addresses()


def test_a_manifest_resumes_only_the_same_deployment(chain: Chain, tmp_path: Path) -> None:
    deployer = Account.create()
    chain.fund(deployer.address, 10**19)
    manifest = tmp_path / "deployment.json"
    chain.deploy_protocol(admin=deployer, manifest=manifest)
    with pytest.raises(ConfigError, match="treasury"):
        chain.deploy_protocol(admin=deployer, manifest=manifest, treasury=deployer.address)
    with pytest.raises(ConfigError, match="deployed by"):
        chain.deploy_protocol(manifest=manifest)
    moved = DeploymentManifest.load(manifest).model_copy(update={"chain_id": 1})
    with pytest.raises(ConfigError, match="chain 1"):
        Protocol.from_manifest(chain, moved)
    half = DeploymentManifest.load(manifest).model_copy(update={"complete": False})
    with pytest.raises(ConfigError, match="not complete"):
        Protocol.from_manifest(chain, half)


def test_a_deployment_with_an_existing_token_records_it_without_a_transaction(
    chain: Chain, protocol: Protocol
) -> None:
    other = chain.deploy_protocol(token=protocol.token.address)
    assert other.token.address == protocol.token.address
    assert other.rewards.address != protocol.rewards.address
    assert other.require_governance().votes.rewards() == other.rewards.address
