"""The Model Factory's commands: ``account``, ``datanet``, ``train``, ``evaluate``.

Each command calls the SDK function a notebook would (``Datanet.create``,
``Datanet.import_jsonl``, ``Datanet.snapshot``, ``finetune``, ``evaluate`` ...) and prints
its result as JSON on standard output, so scripts and CI can read it. Keys are files
holding one ``0x``-hex private key (mode 0600), made with ``openledger account new``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from openledger.cli.datanets import DATANETS_COMMANDS, add_datanets_parser, run_datanets_command
from openledger.exceptions import ConfigError

if TYPE_CHECKING:
    from openledger.crypto import Account
    from openledger.data import AccessGrant, Datanet, RemoteDatanet, Snapshot

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "FACTORY_COMMANDS",
    "add_factory_parsers",
    "load_grant",
    "load_key",
    "open_data",
    "run_factory_command",
]

FACTORY_COMMANDS = frozenset({"account", "datanet", "train", "evaluate"}) | DATANETS_COMMANDS
SCHEMAS = ("instruction", "chat", "text", "classification")


def add_factory_parsers(commands: Commands) -> None:
    """Add the Model Factory's commands to the ``openledger`` parser."""
    account = commands.add_parser("account", help="local signing keys (key files)")
    verbs = account.add_subparsers(dest="verb", required=True, metavar="VERB")
    new = verbs.add_parser("new", help="create a key file (mode 0600) and print its address")
    new.add_argument("key_file", help="where to write the key; refused if it exists")
    show = verbs.add_parser("address", help="print the address of a key file")
    show.add_argument("key_file")
    _add_datanet_parsers(commands)
    add_datanets_parser(commands)
    train = commands.add_parser("train", help="fine-tune a LoRA adapter from a YAML recipe")
    train.add_argument("recipe", help="a LoraRecipe as YAML or JSON")
    train.add_argument("--data", required=True, help=_DATA_HELP)
    train.add_argument("--output", required=True, help="the adapter folder to write")
    train.add_argument("--grant", default=None, help="access grant JSON (private datanets)")
    train.add_argument("--save-steps", type=int, default=None, help="checkpoint every N steps")
    train.add_argument(
        "--resume", action="store_true", help="go on from the latest checkpoint in --output"
    )
    evaluate = commands.add_parser("evaluate", help="an adapter against its base model")
    evaluate.add_argument("adapter", help="the adapter folder")
    evaluate.add_argument("--data", required=True, help=_DATA_HELP)
    evaluate.add_argument("--grant", default=None, help="access grant JSON (private datanets)")
    evaluate.add_argument("--num-generate", type=int, default=16, help="records answered")
    evaluate.add_argument("--max-new-tokens", type=int, default=64, help="longest answer")


_DATA_HELP = "a datanet folder (its latest snapshot), DATANET@N for snapshot N, or a JSONL export"


def _add_datanet_parsers(commands: Commands) -> None:
    datanet = commands.add_parser("datanet", help="create, fill, snapshot and share datanets")
    verbs = datanet.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="a new, empty datanet in a folder")
    create.add_argument("folder")
    create.add_argument("--name", required=True, help="its human-readable name")
    create.add_argument("--schema", choices=SCHEMAS, default="instruction", help="record kind")
    create.add_argument("--private", action="store_true", help="readers need a grant")
    create.add_argument("--owner-key", required=True, help="the owner's key file")
    contribute = verbs.add_parser("contribute", help="sign and add a JSONL or Parquet file")
    _add_where(contribute)
    contribute.add_argument(
        "file", help="rows of the datanet's schema (.jsonl, .csv with a header row, or .parquet)"
    )
    contribute.add_argument("--key", required=True, help="the contributor's key file")
    snapshot = verbs.add_parser("snapshot", help="freeze the accepted records (Merkle root)")
    _add_where(snapshot)
    snapshot.add_argument("--owner-key", default=None, help="the owner's key file (with --url)")
    export = verbs.add_parser("export", help="accepted records with provenance")
    _add_where(export)
    export.add_argument("output", help="a .jsonl or .parquet file")
    export.add_argument("--grant", default=None, help="access grant JSON (private datanets)")
    access = verbs.add_parser("access", help="request, approve, deny or revoke read access")
    steps = access.add_subparsers(dest="step", required=True, metavar="STEP")
    request = steps.add_parser("request", help="ask the owner for access")
    _add_where(request)
    request.add_argument("--key", required=True, help="the requester's key file")
    request.add_argument("--purpose", required=True, help="what the data is for")
    approve = steps.add_parser("approve", help="approve a request; writes the signed grant")
    _add_where(approve)
    approve.add_argument("request_id", type=int)
    approve.add_argument("--owner-key", required=True, help="the owner's key file")
    approve.add_argument("--out", required=True, help="where to write the grant (JSON)")
    approve.add_argument("--days", type=float, default=30.0, help="how long it is valid")
    for verb, what in (("deny", "deny a pending request"), ("revoke", "revoke a grant now")):
        step = steps.add_parser(verb, help=what)
        _add_where(step)
        step.add_argument("request_id", type=int)
        step.add_argument("--owner-key", required=True, help="the owner's key file")


def _add_where(verb: argparse.ArgumentParser) -> None:
    verb.add_argument("folder", nargs="?", default=None, help="the datanet folder (or --url)")
    verb.add_argument(
        "--url", default=None, help="a hosted datanet instead: http(s)://host/v1/datanets/NAME"
    )


def run_factory_command(args: argparse.Namespace, out: TextIO) -> None:
    """Run one of :data:`FACTORY_COMMANDS`."""
    if args.command in DATANETS_COMMANDS:
        run_datanets_command(args, out)
    elif args.command == "account":
        _account(out, args)
    elif args.command == "datanet":
        _datanet(out, args)
    elif args.command == "train":
        _train(out, args)
    elif args.command == "evaluate":
        _evaluate(out, args)


def _print(out: TextIO, body: Any) -> None:
    print(json.dumps(body, indent=2, default=str), file=out)


def _account(out: TextIO, args: argparse.Namespace) -> None:
    from openledger.gateway.metering import new_key_file

    path = Path(args.key_file)
    if args.verb == "new":
        try:
            account = new_key_file(path)
        except FileExistsError:
            raise ConfigError(f"{path} exists already: a key file is never overwritten") from None
        except OSError as exc:
            raise ConfigError(f"cannot write the key file {path}: {exc.strerror}") from None
        _print(out, {"address": account.address, "key_file": str(path)})
    else:
        _print(out, {"address": load_key(path).address})


def load_key(path: str | os.PathLike[str]) -> Account:
    """Read an account from a key file.

    Raises:
        ConfigError: The file is missing or holds no valid key.
    """
    from openledger.crypto import Account
    from openledger.exceptions import CryptoError

    try:
        return Account.from_key(Path(path).read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from None
    except CryptoError as exc:
        raise ConfigError(f"{path} holds no valid private key: {exc}") from None


def _datanet(out: TextIO, args: argparse.Namespace) -> None:
    from openledger.data import Datanet
    from openledger.data.schemas import BUILTIN_SCHEMAS

    if args.verb == "create":
        schemas = {s.schema_id.split(".")[1].split("/")[0]: s for s in BUILTIN_SCHEMAS.values()}
        datanet = Datanet.create(
            args.folder,
            name=args.name,
            schema=schemas[args.schema],
            visibility="private" if args.private else "public",
            owner=load_key(args.owner_key),
        )
        with datanet:
            _print(out, {"datanet_id": datanet.id, "name": datanet.name, "folder": args.folder})
        return
    with _open_where(args) as where:
        if args.verb == "contribute":
            _contribute(out, where, Path(args.file), load_key(args.key))
        elif args.verb == "snapshot":
            snap = _snapshot(where, args.owner_key)
            _print(out, {"snapshot_id": snap.id, "root": snap.root, "records": snap.count})
        elif args.verb == "export":
            _export(out, where, Path(args.output), load_grant(args.grant))
        elif args.verb == "access":
            _access(out, where, args)


def _open_where(args: argparse.Namespace) -> Datanet | RemoteDatanet:
    """The datanet a command names: a folder, or a hosted one with ``--url``."""
    from openledger.data import Datanet, RemoteDatanet

    if (args.folder is None) == (args.url is None):
        raise ConfigError("name the datanet by its folder or by --url (one of them)")
    return Datanet.open(args.folder) if args.url is None else RemoteDatanet(args.url)


def _snapshot(datanet: Datanet | RemoteDatanet, owner_key: str | None) -> Any:
    from openledger.data import RemoteDatanet

    if not isinstance(datanet, RemoteDatanet):
        return datanet.snapshot()
    if owner_key is None:
        raise ConfigError("a hosted datanet's snapshot is asked for by its owner: --owner-key")
    return datanet.snapshot(owner=load_key(owner_key))


def _contribute(
    out: TextIO, datanet: Datanet | RemoteDatanet, path: Path, contributor: Account
) -> None:
    from openledger.data import read_contribution_file

    if not path.is_file():
        raise ConfigError(f"no file at {path}")
    # NOTE: the reader the Studio's upload uses; one contribution: a bad row stores nothing
    receipts = datanet.contribute(read_contribution_file(path), contributor=contributor)
    flagged = sum(1 for r in receipts if r.near_duplicates)
    body = {"contributor": contributor.address, "records": len(receipts)}
    _print(out, {**body, "near_duplicates_flagged": flagged})


def _export(
    out: TextIO, datanet: Datanet | RemoteDatanet, path: Path, grant: AccessGrant | None
) -> None:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        count = datanet.to_jsonl(path, grant=grant)
    elif suffix == ".parquet":
        count = datanet.to_parquet(path, grant=grant)
    else:
        raise ConfigError(f"{path}: export to a .jsonl or .parquet file, not {suffix or 'none'}")
    _print(out, {"records": count, "file": str(path)})


def _access(out: TextIO, datanet: Datanet | RemoteDatanet, args: argparse.Namespace) -> None:
    if args.step == "request":
        request = datanet.request_access(load_key(args.key), args.purpose)
        _print(out, {"request_id": request.id, "status": request.status})
        return
    owner = load_key(args.owner_key)
    if args.step == "approve":
        grant = datanet.approve(args.request_id, owner=owner, ttl_seconds=round(args.days * 86_400))
        target = Path(args.out)
        fd = os.open(target, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(grant.model_dump_json(indent=2) + "\n")
        _print(out, {"request_id": args.request_id, "grant": str(target), "grantee": grant.grantee})
    elif args.step == "deny":
        datanet.deny(args.request_id, owner=owner)
        _print(out, {"request_id": args.request_id, "status": "denied"})
    else:
        datanet.revoke(args.request_id, owner=owner)
        _print(out, {"request_id": args.request_id, "status": "revoked"})


def load_grant(path: str | None) -> AccessGrant | None:
    """Read an access grant written by ``openledger datanet access approve`` (None: none).

    Raises:
        ConfigError: The file cannot be read or is not a grant.
    """
    if path is None:
        return None
    from pydantic import ValidationError

    from openledger.data import AccessGrant

    try:
        return AccessGrant.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the grant {path}: {exc.strerror}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path} is not an access grant: {exc}") from None


def open_data(spec: str) -> Datanet | Snapshot | Path:
    """What ``--data`` names: a datanet folder (latest snapshot), ``FOLDER@N`` (snapshot N),
    or a JSONL export file.

    Raises:
        ConfigError: Nothing usable at that path.
    """
    from openledger.data import Datanet

    folder, at, number = spec.rpartition("@") if "@" in spec else (spec, "", "")
    path = Path(folder)
    if path.is_file() and not at:
        return path
    if not path.is_dir():
        raise ConfigError(f"--data {spec}: no datanet folder or JSONL file at {path}")
    datanet = Datanet.open(path)
    if not at:
        return datanet
    if not number.isdigit():
        raise ConfigError(f"--data {spec}: give a snapshot number after @, e.g. {folder}@1")
    return datanet.snapshot_at(int(number))


def _train(out: TextIO, args: argparse.Namespace) -> None:
    from openledger.train import finetune

    run = finetune(
        args.recipe,
        open_data(args.data),
        args.output,
        grant=load_grant(args.grant),
        save_steps=args.save_steps,
        resume_from_checkpoint=True if args.resume else None,
    )
    manifest = run.adapter.manifest
    _print(
        out,
        {
            "adapter": str(run.output_dir),
            "adapter_id": run.adapter.id,
            "snapshot_root": manifest.snapshot_root,
            "steps": manifest.num_steps,
            "metrics": manifest.metrics,
        },
    )


def _evaluate(out: TextIO, args: argparse.Namespace) -> None:
    from openledger.train import evaluate

    report = evaluate(
        args.adapter,
        open_data(args.data),
        grant=load_grant(args.grant),
        num_generate=args.num_generate,
        max_new_tokens=args.max_new_tokens,
    )
    _print(out, report.to_dict())
