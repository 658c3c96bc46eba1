"""The gateway's commands: ``serve``, ``keys``, ``attribute``, ``settle`` and ``claims``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from openledger.exceptions import ConfigError

if TYPE_CHECKING:
    from openledger.chain import Protocol
    from openledger.crypto import Account

__all__ = ["GATEWAY_COMMANDS", "add_gateway_parsers", "run_gateway_command"]

GATEWAY_COMMANDS = frozenset({"serve", "keys", "attribute", "settle", "claims"})
DEFAULT_MODEL = "smollm2-135m-instruct"

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def add_gateway_parsers(commands: Commands) -> None:
    """Add the gateway's commands to the ``openledger`` parser."""
    serve = commands.add_parser(
        "serve", help="the OpenAI-compatible HTTP gateway (needs the [server] extra)"
    )
    serve.add_argument("--model", default=None, help=f"base model (default: {DEFAULT_MODEL})")
    serve.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="serve a LoRA adapter under NAME (folder, hf://, https archive); repeatable",
    )
    serve.add_argument("--host", default=None, help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (default: 8000)")
    serve.add_argument("--config", default=None, help="YAML settings (GatewayConfig fields)")
    serve.add_argument("--ledger", default=None, help="SQLite ledger of keys and receipts")
    serve.add_argument(
        "--adapter-resolver",
        default=None,
        metavar="FOLDER|hf://ORG",
        help="load unknown adapter names on first request from FOLDER/<name> or hf://ORG/<name>",
    )
    serve.add_argument(
        "--ray",
        action="store_true",
        help="engine replicas on Ray Serve behind one metering ingress (needs the [ray] extra)",
    )
    serve.add_argument(
        "--address",
        default=None,
        help="with --ray: the Ray cluster to join ('auto', ray://HEAD:10001); default a local one",
    )
    serve.add_argument(
        "--replicas", type=int, default=None, help="with --ray: engine replicas (default 1)"
    )
    keys = commands.add_parser("keys", help="API keys of a gateway's ledger")
    verbs = keys.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--ledger", required=True, help="the gateway's ledger file")
    create.add_argument("--payer", default=None, help="account billed for the key's requests")
    create.add_argument("--name", default="", help="a label for the key")
    create.add_argument("--admin", action="store_true", help="an admin key")
    _add_settlement_parsers(commands)


def _add_settlement_parsers(commands: Commands) -> None:
    attribute = commands.add_parser(
        "attribute",
        help="one answer to the records and contributors behind it, or (with --ledger) "
        "every pending answer of a gateway's ledger",
    )
    one = attribute.add_argument_group("one answer")
    one.add_argument("--adapter", default=None, help="the adapter folder that answered")
    one.add_argument("--data", default=None, help="its datanet folder, FOLDER@N, or export")
    one.add_argument("--prompt", default=None, help="the question")
    one.add_argument("--completion", default=None, help="the answer")
    one.add_argument(
        "--method",
        default="datainf",
        choices=["exact", "datainf", "tracin", "gradcos", "spans"],
        help="influence method (default datainf)",
    )
    one.add_argument("--grant", default=None, help="access grant JSON (private datanets)")
    one.add_argument("--top", type=int, default=5, help="records listed")
    ledger = attribute.add_argument_group("a gateway's ledger")
    ledger.add_argument("--ledger", default=None, help="the gateway's ledger file")
    ledger.add_argument(
        "--index",
        action="append",
        default=[],
        metavar="ADAPTER=INDEX",
        help="an adapter folder and its influence index folder; repeatable",
    )
    ledger.add_argument("--batch-size", type=int, default=16, help="answers per model pass")
    ledger.add_argument(
        "--sample",
        type=float,
        default=1.0,
        help="fraction of receipts scored; the rest get their window's mean (default 1)",
    )
    ledger.add_argument("--limit", type=int, default=1024, help="most receipts in this run")
    settle = commands.add_parser(
        "settle", help="pay a gateway ledger's closed windows in one reward epoch"
    )
    settle.add_argument("--ledger", required=True, help="the gateway's ledger file")
    _add_chain_arguments(settle, required=True)
    pool = settle.add_mutually_exclusive_group(required=True)
    pool.add_argument("--pool-wei", type=int, default=None, help="the pool to split, in wei")
    pool.add_argument(
        "--wei-per-1k-tokens", type=int, default=None, help="price: pool = tokens / 1000 x this"
    )
    settle.add_argument(
        "--through-window", type=int, default=None, help="last window (default: last closed)"
    )
    settle.add_argument(
        "--operator-key-file",
        default=None,
        help="the gateway's operator key (default: LEDGER.operator-key)",
    )
    settle.add_argument(
        "--settler-key-file",
        default=None,
        help="key that posts and funds the epoch (default: the operator key)",
    )
    settle.add_argument("--claim-days", type=float, default=30.0, help="claim window in days")
    settle.add_argument(
        "--unpublished-snapshots-ok",
        action="store_true",
        help="credit snapshots not published on chain (deployments without a registry)",
    )
    claims = commands.add_parser("claims", help="an account's unclaimed payouts with proofs")
    claims.add_argument("address", help="the payee")
    claims.add_argument("--ledger", required=True, help="the gateway's ledger file")
    _add_chain_arguments(claims, required=False)


def _add_chain_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--chain", required=required, help="JSON-RPC URL of the chain")
    parser.add_argument(
        "--protocol", required=required, help="JSON file of the protocol's contract addresses"
    )


def run_gateway_command(args: argparse.Namespace, out: TextIO) -> None:
    """Run one of :data:`GATEWAY_COMMANDS`."""
    if args.command == "serve":
        _serve(args)
    elif args.command == "keys" and args.verb == "create":
        _keys_create(out, args)
    elif args.command == "attribute":
        _attribute(out, args)
    elif args.command == "settle":
        _settle(out, args)
    elif args.command == "claims":
        _claims(out, args)


def _serve(args: argparse.Namespace) -> None:
    from openledger.gateway import GatewayConfig, parse_adapter_args, run_server

    overrides = {
        "model": args.model,
        "host": args.host,
        "port": args.port,
        "ledger": args.ledger,
        "adapters": parse_adapter_args(args.adapter) or None,
        "adapter_resolver": args.adapter_resolver,
    }
    if args.config is not None:
        config = GatewayConfig.from_yaml(args.config, **overrides)
    else:
        config = GatewayConfig.merged({}, **overrides)
    if not args.ray:
        if args.address is not None or args.replicas is not None:
            raise ConfigError("--address and --replicas go with --ray")
        run_server(config)
        return
    from openledger.gateway.ray import run_ray_server

    changes = {"address": args.address, "replicas": args.replicas}
    ray = {**config.ray.model_dump(), **{k: v for k, v in changes.items() if v is not None}}
    run_ray_server(GatewayConfig(**{**config.model_dump(), "ray": ray}))


def _keys_create(out: TextIO, args: argparse.Namespace) -> None:
    from openledger.gateway import ReceiptLedger

    with ReceiptLedger(args.ledger) as ledger:
        key, record = ledger.create_key(
            payer=args.payer, role="admin" if args.admin else "user", name=args.name
        )
    print(key, file=out)
    print(
        f"key id {record.key_id}, payer {record.payer}, role {record.role}: keep the key "
        "secret; it is shown only now (the ledger stores its sha256)",
        file=sys.stderr,
    )


def _attribute(out: TextIO, args: argparse.Namespace) -> None:
    if args.ledger is None:
        _attribute_one(out, args)
        return
    from openledger.gateway import AttributionWorker, ReceiptLedger, parse_adapter_args

    if not args.index:
        raise ConfigError("--ledger needs at least one --index ADAPTER=INDEX")
    indexes = parse_adapter_args(args.index, flag="--index", shape="ADAPTER=INDEX")
    with ReceiptLedger(_existing(args.ledger)) as ledger:
        worker = AttributionWorker(ledger, indexes, batch_size=args.batch_size, sample=args.sample)
        done = worker.run_once(limit=args.limit)
    body = {
        "attributed": done.attributed,
        "answers": done.answers,
        "estimated": done.estimated,
        "waiting": done.waiting,
        "adapters_without_index": sorted(done.missing_indexes),
    }
    print(json.dumps(body, indent=2), file=out)


def _attribute_one(out: TextIO, args: argparse.Namespace) -> None:
    from openledger.attribution import attribute
    from openledger.cli.factory import load_grant, open_data
    from openledger.data import Datanet

    wanted = {"--adapter": args.adapter, "--data": args.data, "--prompt": args.prompt}
    wanted["--completion"] = args.completion
    missing = [flag for flag, value in wanted.items() if value is None]
    if missing:
        raise ConfigError(
            f"attribute needs {', '.join(missing)} (or --ledger for a gateway's ledger)"
        )
    data = open_data(args.data)
    if isinstance(data, Path):
        raise ConfigError(
            "--data must name a datanet folder or FOLDER@N: attribution needs "
            "the snapshot the adapter was trained on"
        )
    snapshot = data.latest_snapshot() if isinstance(data, Datanet) else data
    if snapshot is None:
        raise ConfigError(f"--data {args.data}: the datanet has no snapshot")
    report = attribute(
        args.adapter,
        snapshot,
        prompt=args.prompt,
        completion=args.completion,
        method=args.method,
        grant=load_grant(args.grant),
    )
    body = {
        "method": report.method,
        "adapter_id": report.adapter_id,
        "snapshot_root": report.snapshot_root,
        "contributor_shares": report.contributor_shares(),
        "top_records": [
            {"record_hash": r.record_hash, "contributor": r.contributor, "score": r.score}
            for r in report.top(args.top)
        ],
    }
    print(json.dumps(body, indent=2), file=out)


def _settle(out: TextIO, args: argparse.Namespace) -> None:
    from openledger.cli.factory import load_key
    from openledger.gateway import ReceiptLedger, settle_ledger

    ledger_path = _existing(args.ledger)
    operator_file = Path(args.operator_key_file or f"{ledger_path}.operator-key")
    if not operator_file.is_file():
        raise ConfigError(f"no operator key at {operator_file}: give --operator-key-file")
    # NOTE: read, never create: a mistyped key file must not become a fresh, empty account
    operator = load_key(operator_file)
    settler = load_key(args.settler_key_file) if args.settler_key_file else operator
    protocol = _protocol(args.chain, args.protocol, settler)
    with ReceiptLedger(ledger_path) as ledger:
        done = settle_ledger(
            ledger,
            protocol,
            operator=operator,
            pool_wei=args.pool_wei,
            wei_per_1k_tokens=args.wei_per_1k_tokens,
            through_window=args.through_window,
            claim_window=round(args.claim_days * 86_400),
            require_published_snapshots=not args.unpublished_snapshots_ok,
        )
    body = {
        "epoch_id": done.epoch_id,
        "root": done.root,
        "total_wei": str(done.total),
        "transaction": done.transaction,
        "payouts": {a: str(w) for a, w in done.payouts.items()},
        "bond_penalties": {a: str(w) for a, w in done.bond_penalties.items()},
        "settled": len(done.settled),
        "nothing_owed": len(done.nothing_owed),
        "waiting_for_attribution": len(done.waiting),
        "held": done.held,
        "recovered": {str(k): v for k, v in done.recovered.items()},
    }
    print(json.dumps(body, indent=2), file=out)


def _claims(out: TextIO, args: argparse.Namespace) -> None:
    from openledger.gateway import ReceiptLedger, claims_of

    if (args.chain is None) != (args.protocol is None):
        raise ConfigError("give --chain and --protocol together (or neither)")
    protocol = _protocol(args.chain, args.protocol, None) if args.chain else None
    with ReceiptLedger(_existing(args.ledger)) as ledger:
        found = claims_of(ledger, args.address, protocol)
    print(json.dumps([c.to_json() for c in found], indent=2), file=out)


def _existing(path: str) -> Path:
    """A ledger path that must exist (settling never creates an empty ledger)."""
    found = Path(path)
    if not found.is_file():
        raise ConfigError(f"no ledger at {found}")
    return found


def _protocol(url: str, addresses_file: str, sender: Account | None) -> Protocol:
    from openledger.chain import Protocol, connect

    try:
        addresses = json.loads(Path(addresses_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read protocol addresses from {addresses_file}: {exc}") from None
    return Protocol.at(connect(url), addresses, sender=sender)
