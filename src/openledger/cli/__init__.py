"""The ``openledger`` command.

::

    openledger version
    openledger models list [--verify]
    openledger models download NAME [--force]
    openledger demo [--fast] [--output DIR] [--model NAME] [--pool TOKENS] [--max-tokens N]
    openledger chat [--model NAME] [--adapter FOLDER] [--question TEXT] [--max-tokens N]
    openledger serve [--model NAME] [--adapter NAME=SOURCE ...] [--host ADDR] [--port N]
                     [--config FILE] [--ledger PATH] [--adapter-resolver FOLDER|hf://ORG]
                     [--ray [--address ADDR] [--replicas N]]
    openledger keys create --ledger PATH [--payer ADDRESS] [--name LABEL] [--admin]
    openledger account new|address KEY_FILE
    openledger datanet create FOLDER --name NAME --owner-key KEY [--schema S] [--private]
    openledger datanet contribute FOLDER FILE.jsonl|.csv|.parquet --key KEY
    openledger datanet snapshot FOLDER
    openledger datanet export FOLDER OUT.jsonl|.parquet [--grant GRANT]
    openledger datanet access request|approve|deny|revoke FOLDER ...
                       (contribute, snapshot, export and access take --url URL for a hosted one)
    openledger datanets serve FOLDER|postgresql://... [...] [--host ADDR] [--port N]
    openledger train RECIPE.yaml --data FOLDER[@N]|EXPORT.jsonl --output DIR [--resume]
    openledger evaluate ADAPTER --data FOLDER[@N]|EXPORT.jsonl [--grant GRANT]
    openledger attribute --adapter DIR --data FOLDER[@N] --prompt TEXT --completion TEXT
    openledger attribute --ledger PATH --index ADAPTER=INDEX [...] [--batch-size N]
    openledger settle --ledger PATH --chain URL --protocol FILE
                      (--pool-wei N | --wei-per-1k-tokens N) [--through-window W]
                      [--settler-key-file FILE] [--claim-days D]
    openledger claims --ledger PATH ADDRESS [--chain URL --protocol FILE]
    openledger studio [--home FOLDER] [--host ADDR] [--port N] [--share] [--allow-remote]
    openledger chain deploy --rpc-url URL (--keystore FILE | --private-key-env VAR) [...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from openledger._version import __version__
from openledger.cli.chain import CHAIN_COMMANDS, add_chain_parsers, run_chain_command
from openledger.cli.factory import FACTORY_COMMANDS, add_factory_parsers, run_factory_command
from openledger.cli.gateway import GATEWAY_COMMANDS, add_gateway_parsers, run_gateway_command
from openledger.exceptions import ConfigError, OpenLedgerError

__all__ = ["main"]

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_QUESTION = "What is the capital of France? Answer in one sentence."
EPILOG = """examples:
  openledger demo                                   the whole loop on embedded defaults
  openledger account new alice.key                  a signing key (mode 0600)
  openledger datanet create medqa --name medqa --owner-key alice.key
  openledger datanet contribute medqa rows.jsonl --key alice.key
  openledger datanet snapshot medqa
  openledger train recipe.yaml --data medqa@1 --output out/medqa
  openledger chat --adapter out/medqa --question "..."
  openledger attribute --adapter out/medqa --data medqa@1 --prompt "..." --completion "..."
  openledger serve --adapter medqa=out/medqa         the OpenAI-compatible gateway

'openledger COMMAND --help' describes each command; every command prints JSON where it
prints a result."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openledger",
        description="openledger: community datanets, LoRA fine-tuning, multi-adapter serving, "
        "attribution and on-chain rewards.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("version", help="print the installed version")
    models = commands.add_parser("models", help="list or download base models")
    verbs = models.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("list", help="offline aliases and cached models")
    listing.add_argument("--verify", action="store_true", help="hash cached files to check them")
    download = verbs.add_parser("download", help="install and convert an offline alias")
    download.add_argument("name", help="an alias, e.g. smollm2-135m-instruct")
    download.add_argument("--force", action="store_true", help="convert again even if cached")
    demo = commands.add_parser(
        "demo", help="the whole loop: datanets, chain, fine-tuning, serving, attribution, rewards"
    )
    demo.add_argument("--fast", action="store_true", help="tiny model, tiny data (about a minute)")
    demo.add_argument(
        "--output", default="openledger-demo", help="run folder (replaced if a demo's)"
    )
    demo.add_argument("--model", default=None, help=f"base model (default: {DEFAULT_MODEL})")
    demo.add_argument("--pool", type=float, default=100.0, help="reward pool in tokens")
    demo.add_argument("--max-tokens", type=int, default=40, help="longest answer in tokens")
    chat = commands.add_parser("chat", help="stream one answer from the serving engine")
    chat.add_argument("--model", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    chat.add_argument("--adapter", default=None, help="a LoRA adapter folder to answer with")
    chat.add_argument("--question", default=DEFAULT_QUESTION)
    chat.add_argument("--max-tokens", type=int, default=64)
    add_factory_parsers(commands)
    add_gateway_parsers(commands)
    add_chain_parsers(commands)
    _add_studio_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args, sys.stdout)
    except OpenLedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    if args.command == "version":
        print(f"openledger {__version__}", file=out)
    elif args.command == "models" and args.verb == "list":
        _models_list(out, verify=args.verify)
    elif args.command == "models" and args.verb == "download":
        _models_download(out, args.name, force=args.force)
    elif args.command == "demo":
        _demo(out, args)
    elif args.command == "chat":
        _chat(out, args.model, args.adapter, args.question, args.max_tokens)
    elif args.command in FACTORY_COMMANDS:
        run_factory_command(args, out)
    elif args.command in GATEWAY_COMMANDS:
        run_gateway_command(args, out)
    elif args.command in CHAIN_COMMANDS:
        run_chain_command(args, out)
    elif args.command == "studio":
        _studio(args)
    return 0


def _models_list(out: TextIO, *, verify: bool) -> None:
    from openledger.models import list_models

    rows = list_models(verify=verify)
    width = max(len(row.name) for row in rows)
    print(f"{'NAME':<{width}}  KIND   INSTALLED  CACHED  DESCRIPTION", file=out)
    for row in rows:
        installed = "yes" if row.installed else "no"
        cached = "yes" if row.cached else "no"
        line = f"{row.name:<{width}}  {row.kind:<5}  {installed:<9}  {cached:<6}  "
        print(line + row.description, file=out)


def _models_download(out: TextIO, name: str, *, force: bool) -> None:
    from openledger.models import download_model

    started = time.perf_counter()
    folder = download_model(name, force=force)
    print(f"{name} ready in {folder} ({time.perf_counter() - started:.1f} s)", file=out)


def _demo(out: TextIO, args: argparse.Namespace) -> None:
    from openledger.demo import DemoConfig, run_demo

    if not args.pool > 0:
        raise ConfigError(f"--pool must be positive, got {args.pool}")
    config = DemoConfig(
        output_dir=Path(args.output),
        fast=args.fast,
        base_model=args.model,
        pool_wei=round(args.pool * 10**18),
        max_tokens=args.max_tokens,
    )
    result = run_demo(config, out)
    total = sum(result.payouts.values())
    if total != result.pool_wei or result.claimed != result.payouts:
        raise ConfigError("the payouts do not add up to the pool or a claim failed (see above)")


def _chat(
    out: TextIO, model_name: str, adapter: str | None, question: str, max_tokens: int
) -> None:
    from openledger.serve import Engine, SamplingParams

    if max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    print(f"loading {model_name} ...", file=out, flush=True)
    started = time.perf_counter()
    engine = Engine(model_name)
    if adapter is not None:
        engine.add_adapter("adapter", adapter)
    print(f"loaded in {time.perf_counter() - started:.1f} s", file=out)
    print(f"\nuser> {question}\nassistant> ", end="", file=out, flush=True)
    params = SamplingParams(max_tokens=max_tokens, adapter="adapter" if adapter else None)
    messages = [{"role": "user", "content": question}]
    count = 0
    started = time.perf_counter()
    for piece in engine.stream(messages, params):
        print(piece, end="", file=out, flush=True)
        count += 1
    elapsed = time.perf_counter() - started
    print(f"\n\n[{count} pieces streamed in {elapsed:.1f} s]", file=out)


def _add_studio_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    studio = commands.add_parser("studio", help="the Studio web app (needs the [server] extra)")
    studio.add_argument("--home", default="openledger-studio", help="the Studio's work folder")
    studio.add_argument("--host", default="127.0.0.1", help="address to bind (loopback only)")
    studio.add_argument("--port", type=int, default=7860, help="TCP port (default: 7860)")
    studio.add_argument("--share", action="store_true", help="listen on every interface")
    studio.add_argument(
        "--allow-remote", action="store_true", help="allow --share or a non-loopback --host"
    )


def _studio(args: argparse.Namespace) -> None:
    from openledger.studio import StudioConfig, run_studio

    if args.share and not args.allow_remote:
        raise ConfigError(
            "--share makes the Studio (which has no login) reachable from other machines; "
            "add --allow-remote if you really mean it"
        )
    host = "0.0.0.0" if args.share else args.host
    config = StudioConfig(
        home=Path(args.home), host=host, port=args.port, allow_remote=args.allow_remote
    )
    run_studio(config)
