"""``openledger datanets serve``: host datanets over HTTP (the ``[server]`` extra).

::

    openledger datanets serve ./medqa postgresql://db.example.org/datanets?datanet=law \\
        --host 0.0.0.0 --port 8100

Prints one JSON line naming each hosted datanet's URL (what ``RemoteDatanet`` and
``openledger datanet contribute --url`` take), then serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["DATANETS_COMMANDS", "add_datanets_parser", "run_datanets_command"]

DATANETS_COMMANDS = frozenset({"datanets"})


def add_datanets_parser(commands: Commands) -> None:
    """Add ``openledger datanets serve``."""
    datanets = commands.add_parser("datanets", help="host datanets over HTTP (contributions, "
                                   "reviews, access, snapshots and proofs)")  # fmt: skip
    verbs = datanets.add_subparsers(dest="verb", required=True, metavar="VERB")
    serve = verbs.add_parser("serve", help="serve datanet folders or PostgreSQL stores")
    serve.add_argument("locations", nargs="+", help="datanet folders or postgresql:// URLs")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve.add_argument("--port", type=int, default=8100, help="TCP port (default: 8100)")
    serve.add_argument(
        "--allow-module",
        action="append",
        default=[],
        help="a module user schemas may be imported from (repeatable)",
    )
    serve.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body")
    serve.add_argument(
        "--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug")
    )


def run_datanets_command(args: argparse.Namespace, out: TextIO) -> None:
    """Run ``openledger datanets serve``."""
    from openledger.gateway.datanets import DatanetService, run_datanet_server
    from openledger.gateway.datanets.app import MOUNT_PATH
    from openledger.gateway.server import require_server_extra

    require_server_extra()
    service = DatanetService.open(
        args.locations,
        allow_modules=args.allow_module,
        max_body_bytes=round(args.max_body_mb * 2**20),
    )
    base = f"http://{args.host}:{args.port}{MOUNT_PATH}/"
    hosted = [
        {"name": h.datanet.name, "id": h.datanet.id, "url": base + h.datanet.name}
        for h in service.hosted.values()
    ]
    print(json.dumps({"serving": base, "datanets": hosted}), file=out, flush=True)
    run_datanet_server(service, host=args.host, port=args.port, log_level=args.log_level)
