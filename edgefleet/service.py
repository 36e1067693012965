"""``edgefleet agent|gateway install-service``: the systemd unit, its system user, its state
directory and an example configuration, installed under a root folder.

The files shipped in ``edgefleet/systemd/`` are the only source: the unit is written as shipped
except for the ExecStart path, which names the ``edgefleet`` of this installation. Nothing runs
``systemctl`` unless ``--enable`` asks for it. docs/install.md tells the whole story.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from edgefleet.errors import UserError
from edgefleet.fsio import atomic_write_bytes

SHIPPED_EXECUTABLE = "/usr/bin/edgefleet"
# What ProtectHome=yes hides from both services.
HIDDEN_FROM_SERVICES = ("/home/", "/root/", "/run/user/")
# What ExecStart= takes unquoted: no blanks, quotes, backslashes, '%' specifiers or '$' variables.
PLAIN_PATH = re.compile(r"/[\w./+@:,-]*")


@dataclass(frozen=True)
class File:
    """One file to install: where it goes on the target system, and its bytes."""

    kind: str  # unit | sysusers | tmpfiles | config
    path: PurePosixPath
    data: bytes
    keep_existing: bool = False  # a configuration is never overwritten


def unit_name(role: str) -> str:
    return f"edgefleet-{role}.service"


def plan(role: str, executable: str) -> list[File]:
    """The files of ``role``'s service, in the order they are written (the unit last)."""
    shipped = resources.files("edgefleet") / "systemd"
    name = f"edgefleet-{role}"
    unit = render_unit((shipped / f"{name}.service").read_text(), executable)
    return [
        File(
            "sysusers",
            PurePosixPath(f"/etc/sysusers.d/{name}.conf"),
            (shipped / f"{name}.sysusers.conf").read_bytes(),
        ),
        File(
            "tmpfiles",
            PurePosixPath(f"/etc/tmpfiles.d/{name}.conf"),
            (shipped / f"{name}.tmpfiles.conf").read_bytes(),
        ),
        File(
            "config",
            PurePosixPath(f"/etc/edgefleet/{role}.toml"),
            (shipped / f"{role}.toml").read_bytes(),
            keep_existing=True,
        ),
        File("unit", PurePosixPath(f"/etc/systemd/system/{name}.service"), unit.encode()),
    ]


def render_unit(text: str, executable: str) -> str:
    """The shipped unit with ExecStart naming ``executable``."""
    if not PLAIN_PATH.fullmatch(executable):
        raise UserError(
            f"{executable}: ExecStart cannot take this path unquoted; install "
            "edgefleet in a folder whose path has no blanks, quotes, '%' or '$'"
        )
    old = f"\nExecStart={SHIPPED_EXECUTABLE} "
    if text.count(old) != 1:
        raise RuntimeError(f"shipped unit lacks one 'ExecStart={SHIPPED_EXECUTABLE} ' line")
    return text.replace(old, f"\nExecStart={executable} ")


def installed_executable() -> str:
    """The ``edgefleet`` script of this installation: the one running, else the one beside the
    interpreter (``python -m edgefleet.cli``)."""
    for candidate in (sys.argv[0], os.path.join(sysconfig.get_path("scripts"), "edgefleet")):
        if os.path.basename(candidate) == "edgefleet" and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    raise UserError(
        "cannot find the edgefleet executable of this installation; run this "
        "command as the installed edgefleet"
    )


def hidden_from_services(executable: str) -> list[str]:
    """The files the service needs to start ``executable`` (the script and the interpreter its
    ``#!`` line names) that lie where ProtectHome= hides them: such a service cannot start."""
    paths = [os.path.realpath(executable)]
    with open(executable, "rb") as script:
        first = script.readline()
    if first.startswith(b"#!") and first[2:].split():
        paths.append(os.path.realpath(first[2:].split()[0].decode(errors="replace")))
    return [path for path in paths if path.startswith(HIDDEN_FROM_SERVICES)]


def next_steps(role: str, files: list[File]) -> list[list[str]]:
    """What makes the installed files a running service, in order (what ``--enable`` runs)."""
    paths = {f.kind: str(f.path) for f in files}
    return [
        ["systemd-sysusers", paths["sysusers"]],
        ["systemd-tmpfiles", "--create", paths["tmpfiles"]],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", unit_name(role)],
    ]


def install(args: argparse.Namespace) -> int:
    role = args.service_role
    root = Path(os.path.abspath(args.root))
    if not root.is_dir():
        raise UserError(f"--root {args.root}: not a folder")
    executable = installed_executable()
    files = plan(role, executable)
    targets = [root / f.path.relative_to("/") for f in files]
    actions = [
        "keep" if f.keep_existing and t.exists() else "write"
        for f, t in zip(files, targets, strict=True)
    ]
    steps = next_steps(role, files)
    warnings = [
        f"{path} is under /home, /root or /run/user, which the service cannot see "
        "(ProtectHome=yes); install edgefleet elsewhere, e.g. in a venv in /opt/edgefleet"
        for path in hidden_from_services(executable)
    ]
    if args.enable:
        config = next(t for f, t in zip(files, targets, strict=True) if f.kind == "config")
        _check_enable(root, config, steps)
        if warnings:
            raise UserError(f"--enable: {warnings[0]}")
    if not args.dry_run:
        for target in targets:
            _check_writable(target)
        for file, target, action in zip(files, targets, actions, strict=True):
            if action == "write":
                _write(target, file.data)
        if args.enable:
            for step in steps:
                _run(step, role)
    report = {
        "service": unit_name(role),
        "root": str(root),
        "executable": executable,
        "warnings": warnings,
        "dry_run": args.dry_run,
        "files": [
            {"kind": f.kind, "path": str(t), "action": a}
            | ({"content": f.data.decode()} if args.dry_run else {})
            for f, t, a in zip(files, targets, actions, strict=True)
        ],
        "commands": [" ".join(step) for step in steps],
        "enabled": args.enable and not args.dry_run,
    }
    for warning in warnings:
        print(f"edgefleet: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report, args.enable)
    return 0


def _check_enable(root: Path, config: Path, steps: list[list[str]]) -> None:
    if root != Path("/"):
        raise UserError("--enable starts the service on this machine: it needs --root /")
    if not config.is_file():
        raise UserError(
            f"--enable: {config} does not exist; run without --enable to get an "
            "example, edit it, then run again with --enable"
        )
    for tool in sorted({step[0] for step in steps}):
        if shutil.which(tool) is None:
            raise UserError(f"--enable needs systemd: {tool} not found")


def _check_writable(target: Path) -> None:
    """Refuse before anything is written, so a failed install leaves the root as it was."""
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {target}: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise UserError(
            f"cannot write {target}: permission denied (run as root, or install "
            "under a folder of yours with --root DIR)"
        )


def _write(target: Path, data: bytes) -> None:
    try:
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write_bytes(target, data, mode=0o644)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}") from None


def _run(step: list[str], role: str) -> None:
    # Their output goes to stderr, so --json output stays one document.
    result = subprocess.run(step, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stderr.write(result.stdout)
    if result.returncode != 0:
        hint = f"; see journalctl -u {unit_name(role)}" if step[0] == "systemctl" else ""
        raise UserError(f"{' '.join(step)} failed with exit code {result.returncode}{hint}")


def _print(report: dict, enable: bool) -> None:
    for file in report["files"]:
        verb = {"write": "wrote", "keep": "kept"}[file["action"]]
        if report["dry_run"]:
            verb = f"would {file['action']}"
        note = {
            ("config", "write"): " (an example: edit it)",
            ("config", "keep"): " (exists; never overwritten)",
            ("unit", "write"): f" (ExecStart: {report['executable']})",
        }.get((file["kind"], file["action"]), "")
        print(f"{verb} {file['path']}{note}")
        if report["dry_run"] and file["action"] == "write":
            print(file["content"], end="" if file["content"].endswith("\n") else "\n")
    if report["enabled"]:
        print(f"{report['service']} is enabled and running")
        return
    if enable:
        print("would run:")
    else:
        staged = report["root"] != "/"
        print(f"next, as root{' on the system this root becomes' if staged else ''}:")
        config = next(f for f in report["files"] if f["kind"] == "config")
        if config["action"] == "write":
            print(f"  edit {config['path']}")
    for command in report["commands"]:
        print(f"  {command}")
