"""The chain's commands: ``openledger chain deploy``.

::

    openledger chain deploy --rpc-url URL (--keystore FILE [--password-env VAR]
                                           | --private-key-env VAR)
                            [--manifest FILE] [--token ADDRESS] [--treasury ADDRESS]
                            [--initial-supply WEI] [--keep-admin]

The deployment is journaled in the manifest as it goes; run the same command again after
an interruption and it finishes the same deployment instead of starting another.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from openledger.exceptions import ConfigError

if TYPE_CHECKING:
    from openledger.crypto import Account

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["CHAIN_COMMANDS", "add_chain_parsers", "run_chain_command"]

CHAIN_COMMANDS = frozenset({"chain"})
DEFAULT_MANIFEST = "openledger-deployment.json"


def add_chain_parsers(commands: Commands) -> None:
    """Add ``chain`` and its verbs to the ``openledger`` parser."""
    chain = commands.add_parser("chain", help="deploy the protocol's contracts to an EVM chain")
    verbs = chain.add_subparsers(dest="verb", required=True, metavar="VERB")
    deploy = verbs.add_parser(
        "deploy", help="deploy (or finish deploying) the whole protocol; writes a manifest"
    )
    deploy.add_argument("--rpc-url", required=True, help="the chain's JSON-RPC URL")
    key = deploy.add_mutually_exclusive_group(required=True)
    key.add_argument("--keystore", default=None, help="the deployer's encrypted JSON keystore")
    key.add_argument(
        "--private-key-env", default=None, metavar="VAR", help="variable holding the deployer's key"
    )
    deploy.add_argument(
        "--password-env",
        default=None,
        metavar="VAR",
        help="variable holding the keystore's password (else asked on the terminal)",
    )
    deploy.add_argument(
        "--manifest", default=DEFAULT_MANIFEST, help=f"the deployment manifest ({DEFAULT_MANIFEST})"
    )
    deploy.add_argument("--token", default=None, help="an existing ERC-20 instead of OpenToken")
    deploy.add_argument("--treasury", default=None, help="treasury address (default: timelock)")
    deploy.add_argument(
        "--initial-supply", type=int, default=10**27, help="OpenToken minted to the deployer (wei)"
    )
    deploy.add_argument(
        "--keep-admin",
        action="store_true",
        help="keep the deployer as admin of the parameters (else the governance timelock)",
    )


def run_chain_command(args: argparse.Namespace, out: TextIO) -> None:
    """Run ``openledger chain VERB``."""
    if args.verb == "deploy":
        _deploy(args, out)


def _deploy(args: argparse.Namespace, out: TextIO) -> None:
    from openledger.chain import DeploymentManifest, connect

    deployer = _deployer(args)
    chain = connect(args.rpc_url)
    manifest = Path(args.manifest)
    resumed = manifest.exists()
    if not resumed and chain.balance(deployer.address) == 0:
        raise ConfigError(f"the deployer {deployer.address} holds no native coin to pay for gas")
    chain.deploy_protocol(
        admin=deployer,
        token=args.token,
        initial_supply=args.initial_supply,
        treasury=args.treasury,
        governed=not args.keep_admin,
        manifest=manifest,
    )
    done = DeploymentManifest.load(manifest)
    body = {
        "manifest": str(manifest),
        "chain_id": done.chain_id,
        "deployment_block": done.deployment_block,
        "resumed": resumed,
        "contracts": {k: r.address for k, r in done.contracts.items()},
    }
    print(json.dumps(body, indent=2), file=out)


def _deployer(args: argparse.Namespace) -> Account:
    from openledger.crypto import Account

    if args.private_key_env is not None:
        key = os.environ.get(args.private_key_env)
        if not key:
            raise ConfigError(f"environment variable {args.private_key_env} is not set")
        return Account.from_key(key.strip())
    return Account.from_key(_decrypt_keystore(Path(args.keystore), args.password_env))


def _decrypt_keystore(path: Path, password_env: str | None) -> bytes:
    from eth_account import Account as EthAccount

    try:
        keystore = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read a keystore from {path}: {exc}") from None
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise ConfigError(f"environment variable {password_env} is not set")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password of {path.name}: ")
    else:
        raise ConfigError("no terminal to ask the keystore's password: pass --password-env VAR")
    try:
        return bytes(EthAccount.decrypt(keystore, password))
    except ValueError as exc:  # a wrong password ("MAC mismatch") or a malformed keystore
        raise ConfigError(f"cannot decrypt {path}: {exc}") from None
