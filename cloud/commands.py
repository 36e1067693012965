"""``edgefleet cloud serve|dataset list|dataset export``: the reference receiver of the gateway's
HTTPS sink, and the dataset it writes seen from the training side. Labels, quality and
evaluation (``label import``, ``quality``, ``evaluate``) are in ``cloud.quality_commands``."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from cloud import quality_commands
from edgefleet.commandline import add_json, add_table_options
from edgefleet.errors import UserError

DEFAULT_LISTEN = "127.0.0.1:8700"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cloud", help="the cloud end of the data loop: receiver and Parquet dataset"
    )
    commands = parser.add_subparsers(dest="cloud_command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="receive gateway uploads (POST /ingest) into a Parquet dataset",
        description="Take the gateways' batches (gzip NDJSON, bearer token, Idempotency-Key) "
        "and write each as Parquet files named by its key under --dataset, so a batch sent "
        "again replaces its own files. Prints the URL it serves; SIGTERM or SIGINT stop it "
        "after the requests in progress. Layout and answers: docs/cloud.md.",
    )
    _dataset(serve)
    serve.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
        help="address to listen on (port 0: any free port); plain HTTP only on loopback",
    )  # fmt: skip
    serve.add_argument(
        "--token-file", type=Path, required=True, metavar="FILE",
        help="file holding the bearer token the gateways send",
    )  # fmt: skip
    serve.add_argument(
        "--max-body-mb", type=int, default=64, metavar="MB",
        help="largest batch taken, compressed and inflated (MiB); bigger ones get 413",
    )  # fmt: skip
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this chain")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="the key of --tls-cert")
    serve.set_defaults(handler=run_serve)

    data = commands.add_parser("dataset", help="what the dataset holds; exports for training")
    data_commands = data.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)
    listing = data_commands.add_parser(
        "list",
        help="partitions: stream, model, version, day, rows, bytes",
        description="Rows are as stored: a record the gateway sent in two batches counts twice "
        "here and once in an export.",
    )
    _dataset(listing)
    add_table_options(listing, "the partitions")
    listing.set_defaults(handler=run_list)

    export = data_commands.add_parser(
        "export",
        help="rows of one stream as NPZ or one Parquet file, with a manifest",
        description="One row per record id. NPZ holds 'inputs' (the tensors stacked: one "
        "shape and dtype, so narrow mixed data with --model/--version), 'scores', 'labels' "
        "(-1 where not labelled) and 'ids' (dev:boot:seq); Parquet holds every column and the "
        "partition keys. Both write OUT.manifest.json (format, files, rows, input dtype and "
        "shape, classes, models and versions, filters, time).",
    )
    _dataset(export)
    export.add_argument(
        "--stream", required=True, choices=("telemetry", "samples", "summaries", "other"),
        help="which stream to export",
    )  # fmt: skip
    export.add_argument("--model", help="only this model")
    export.add_argument("--version", type=int, help="only this model version")
    export.add_argument("--campaign", help="only samples of this campaign")
    export.add_argument(
        "--labelled",
        action="store_true",
        help="only rows with a label (imported with 'cloud label import' or sent by devices); "
        "such an NPZ is an evaluation set 'release add --eval-set' takes",
    )
    export.add_argument("--format", required=True, choices=("npz", "parquet"), dest="fmt")
    export.add_argument("--out", type=Path, required=True, metavar="PATH", help="file to write")
    add_json(export, "the manifest")
    export.set_defaults(handler=run_export)
    quality_commands.register(commands, _dataset)


def _dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", type=Path, required=True, metavar="DIR", help="the dataset's root directory"
    )


def parse_listen(text: str, tls: bool) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise UserError(f"--listen {text}: must be HOST:PORT")
    if not tls:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise UserError(f"--listen {text}: plain HTTP only on loopback; give --tls-cert")
    return host, int(port)


def run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from cloud.receiver import MiB, ReceiverConfig
    from cloud.server import serve

    if (args.tls_cert is None) != (args.tls_key is None):
        raise UserError("--tls-cert and --tls-key go together")
    host, port = parse_listen(args.listen, args.tls_cert is not None)
    if not 1 <= args.max_body_mb <= 4096:
        raise UserError(f"--max-body-mb {args.max_body_mb}: must be 1..4096")
    try:
        token = args.token_file.read_text().strip()
    except OSError as exc:
        raise UserError(f"--token-file {args.token_file}: {exc.strerror}") from None
    if not token:
        raise UserError(f"--token-file {args.token_file}: the file is empty")
    args.dataset.mkdir(parents=True, exist_ok=True)
    size = args.max_body_mb * MiB
    config = ReceiverConfig(str(args.dataset), token, size, size)
    try:
        asyncio.run(serve(config, host, port, args.tls_cert, args.tls_key))
    except OSError as exc:  # the address is taken, or a certificate cannot be read
        raise UserError(f"cannot serve on {args.listen}: {exc.strerror or exc}") from None
    return 0


def run_list(args: argparse.Namespace) -> int:
    import json

    from cloud.queries import partitions
    from edgefleet.tables import Column, print_table

    if not args.dataset.is_dir():
        raise UserError(f"--dataset {args.dataset}: no such directory")
    found = partitions(args.dataset)
    if args.json:
        print(json.dumps({"dataset": str(args.dataset), "partitions": found}, indent=2))
        return 0
    columns = [
        Column("stream"),
        Column("model"),
        Column("version", right=True),
        Column("day"),
        Column("rows", right=True),
        Column("bytes", right=True),
    ]
    rows = [[p[c.name] for c in columns] for p in found]
    print_table(columns, rows, title=str(args.dataset), wide=args.wide)
    return 0


def run_export(args: argparse.Namespace) -> int:
    import json

    from cloud.queries import ExportError, Filters, export

    if not args.dataset.is_dir():
        raise UserError(f"--dataset {args.dataset}: no such directory")
    filters = Filters(args.stream, args.model, args.version, args.campaign, args.labelled)
    try:
        manifest = export(args.dataset, filters, args.fmt, args.out)
    except ExportError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        shape = manifest["input"]
        what = f", inputs {shape['dtype']}{shape['shape']}" if shape else ""
        print(f"{args.out}: {manifest['rows']} rows{what}; manifest {args.out}.manifest.json")
    return 0
