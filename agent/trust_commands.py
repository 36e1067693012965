"""``edgefleet verify``: what a device would accept from a repository, checked by hand."""

from __future__ import annotations

import json
from pathlib import Path


def register(subparsers) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="check a release against a trusted root, as a device does",
        description="Refresh TUF metadata from a repository (folder or http URL) against a "
        "trusted root.json and print the verified target; with --download, fetch it too. "
        "Exits 1 when the repository cannot prove the target.",
    )
    verify.add_argument("target", help="target path, e.g. kws/3.tflite")
    verify.add_argument("--repo", required=True, help="repository folder or http(s) URL")
    verify.add_argument("--root", type=Path, help="trusted root.json (first use of --metadata-dir)")
    verify.add_argument(
        "--metadata-dir",
        type=Path,
        required=True,
        help="the client's metadata cache (keeps rollback protection)",
    )
    verify.add_argument(
        "--download", type=Path, metavar="FILE", help="also download the verified target to FILE"
    )
    verify.add_argument("--json", action="store_true", help="print JSON for scripts")
    verify.set_defaults(handler=_verify)


def _verify(args) -> int:
    from agent.trust import TrustedRepository, TrustError

    try:
        repo = TrustedRepository(args.metadata_dir, args.repo, args.root)
        if args.download:
            target = repo.download(args.target, args.download)
        else:
            target = repo.target(args.target)
        meta = target.model_meta() if args.target.endswith(".tflite") else None
    except TrustError as exc:
        if args.json:
            print(json.dumps({"verified": False, "reason": exc.reason, "error": str(exc)}))
        else:
            print(f"edgefleet: refused: {exc}")
        return 1
    result = {
        "verified": True,
        "target": target.path,
        "length": target.length,
        "sha256": target.sha256,
    }
    if meta:
        result["model"] = {"name": meta.name, "version": meta.version}
    if args.json:
        print(json.dumps(result))
    else:
        line = f"verified {target.path}: {target.length} bytes, sha256 {target.sha256[:16]}"
        print(line + (f" -> {args.download}" if args.download else ""))
    return 0
