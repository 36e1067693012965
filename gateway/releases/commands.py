"""``edgefleet keys`` and ``edgefleet release``: the operator's signing tools."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import structlog

from edgefleet.commandline import add_json, add_table_options
from edgefleet.tables import Column, print_table

# Model versions of a name that `release add` keeps listed in the targets metadata.
KEEP_VERSIONS = 5
log = structlog.get_logger()


def register(subparsers) -> None:
    keys = subparsers.add_parser(
        "keys",
        help="create and rotate the repository's signing keys",
        description="Create and rotate the signing keys of a release repository. Root and "
        "targets keys are offline keys: keep them away from the gateway. Snapshot, timestamp "
        "and deltas keys are online keys that the gateway holds.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = keys_sub.add_parser("init", help="create keys and an empty signed repository")
    _repo_arguments(init)
    add_json(init, "the repository's folders")
    init.set_defaults(handler=_keys_init)
    rotate = keys_sub.add_parser(
        "rotate", help="replace a role's key through a new root that existing devices accept"
    )
    _repo_arguments(rotate)
    rotate.add_argument(
        "--role", required=True, choices=["root", "targets", "snapshot", "timestamp"]
    )
    add_json(rotate, "the new key")
    rotate.set_defaults(handler=_keys_rotate)

    release = subparsers.add_parser(
        "release",
        help="sign model versions and MCU images into a release repository",
        description="Sign model versions as TUF targets carrying their ML metadata "
        "(tensor signature, health-gate vectors, latency budget, drift references), and MCU "
        "images (MCUboot, signed by imgtool) as targets that say they are for an MCU.",
    )
    release_sub = release.add_subparsers(dest="release_command", metavar="ACTION", required=True)
    add = release_sub.add_parser(
        "add",
        help="sign a .tflite model as NAME/VERSION.tflite",
        description="Run the model on reference inputs (seeded, or --reference-inputs), record "
        "its outputs for the health gate and its drift reference histograms, and sign it with "
        "the offline targets key.",
    )
    _repo_arguments(add)
    add.add_argument("model", type=Path, metavar="MODEL.tflite")
    add.add_argument("--name", required=True, help="model name, e.g. kws")
    add.add_argument(
        "--version",
        required=True,
        type=int,
        help="integer version, higher than the latest signed one",
    )
    add.add_argument(
        "--expires",
        default="90d",
        help="lifetime of the targets metadata, e.g. 90d, 12h",
    )
    add.add_argument(
        "--reference-inputs",
        type=Path,
        metavar="INPUTS.npy",
        help="float reference inputs [N, *input shape] instead of seeded ones",
    )
    add.add_argument(
        "--samples",
        type=int,
        default=1000,
        help="seeded reference inputs to generate: the drift reference histograms come from "
        "them (fewer than 500 give false drift alarms)",
    )
    add.add_argument(
        "--gate-samples",
        type=int,
        default=8,
        help="reference inputs the health gate replays on the device",
    )
    add.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    add.add_argument(
        "--keep-versions",
        type=int,
        default=KEEP_VERSIONS,
        metavar="N",
        help="versions of NAME the metadata keeps listing, this one included: older ones are "
        "pruned, except those signed as rollbacks, so what every device fetches stops "
        "growing; a device still on a pruned version gets the full model instead of a delta",
    )
    add.add_argument(
        "--atol",
        type=float,
        help="output tolerance of the health gate (default: 2 quantization steps, "
        "or 1e-3 for float outputs)",
    )
    add.add_argument(
        "--latency-budget-ms",
        type=float,
        help="latency budget per inference (default: 20x the time measured here, at least 50 ms)",
    )
    add.add_argument("--arena-bytes", type=int, help="tensor arena an MCU needs for this model")
    add.add_argument(
        "--hardware-tag",
        action="append",
        default=[],
        dest="hardware_tags",
        help="hardware the model is built for (repeatable)",
    )
    add.add_argument(
        "--eval-set",
        type=Path,
        metavar="PATH",
        help="labelled evaluation set: a .npz with 'inputs' [N, *input shape] (float32, or the "
        "input tensor's dtype) and 'labels' [N] (class indices), or a folder holding eval.npz; "
        "signed as NAME/VERSION.eval.npz, and devices refuse the model below --min-accuracy",
    )
    add.add_argument(
        "--min-accuracy",
        type=float,
        metavar="RATE",
        help="accuracy (0 to 1) the model must reach on --eval-set, here and on every device",
    )
    add.add_argument(
        "--sign-below-minimum",
        action="store_true",
        help="sign a model below --min-accuracy anyway, for experiments: it is marked as not "
        "passed, the gateway refuses rollouts of it and devices refuse it",
    )
    add.add_argument(
        "--probation-min-agreement",
        type=float,
        metavar="RATE",
        help="the top-class agreement (0 to 1) with the incumbent that probation expects of "
        "this model, instead of each device's [update.probation] min_agreement: for a model "
        "retrained on drifted inputs, meant to disagree with the one it replaces (its "
        "--eval-set floor then says what it must get right)",
    )
    add.add_argument(
        "--probation-max-psi",
        type=float,
        metavar="PSI",
        help="the PSI between this model's and the incumbent's top-class distributions that "
        "probation accepts, instead of each device's max_psi (see --probation-min-agreement)",
    )
    add.add_argument("--json", action="store_true", help="print the signed release as JSON")
    add.set_defaults(handler=_release_add)

    image = release_sub.add_parser(
        "add-image",
        help="sign an MCUboot image as NAME/VERSION.bin",
        description="Sign an MCU image exactly as imgtool wrote it, with the version its MCUboot "
        "header carries and its size, with the offline targets key. Agents with an [[mcu]] of "
        "this name install it on that MCU during a rollout; the MCU checks the image's own "
        "signature again.",
    )
    _repo_arguments(image)
    image.add_argument("image", type=Path, metavar="IMAGE", help="image signed by imgtool")
    image.add_argument("--name", required=True, help="MCU image name, e.g. sensor-fw")
    image.add_argument(
        "--version", required=True, type=int, help="integer version, higher than the latest"
    )
    image.add_argument("--expires", default="90d", help="lifetime of the targets metadata")
    image.add_argument(
        "--force",
        action="store_true",
        help="sign even when the MCUboot header's major version is not --version",
    )
    image.add_argument("--json", action="store_true", help="print the signed image as JSON")
    image.set_defaults(handler=_release_add_image)

    rollback = release_sub.add_parser(
        "rollback",
        help="sign an older version as a permitted downgrade",
        description="Devices refuse a model version lower than the one they run unless the "
        "targets key signed it as a rollback. This re-signs NAME/VERSION with that mark; a "
        "rollout of it then takes devices back.",
    )
    _repo_arguments(rollback)
    rollback.add_argument("--name", required=True)
    rollback.add_argument("--version", required=True, type=int)
    add_json(rollback, "the re-signed release")
    rollback.set_defaults(handler=_release_rollback)

    renew = release_sub.add_parser(
        "renew",
        help="re-sign the targets or root metadata with a new expiry",
        description="Devices refuse expired metadata. The gateway renews the online roles "
        "(timestamp, snapshot, deltas) itself; the offline ones only their keys can renew. "
        "This re-signs ROLE with a new expiry; import the repository into the gateway "
        "(gateway import-release) to serve it.",
    )
    _repo_arguments(renew)
    renew.add_argument(
        "--role",
        choices=["targets", "root"],
        default="targets",
        help="the offline role to renew",
    )
    renew.add_argument(
        "--expires",
        help="new lifetime, e.g. 90d (default: 90d for targets, 365d for root)",
    )
    renew.add_argument("--json", action="store_true", help="print the new expiry as JSON")
    renew.set_defaults(handler=_release_renew)

    expiry = release_sub.add_parser(
        "expiry", help="when each role's metadata expires, with warnings for the offline ones"
    )
    _repo_arguments(expiry)
    add_table_options(expiry, "the expiries")
    expiry.set_defaults(handler=_release_expiry)

    show = release_sub.add_parser(
        "show", help="one signed model version: its tensors, gate, budget and evaluation"
    )
    _repo_arguments(show)
    show.add_argument("--name", required=True)
    show.add_argument("--version", required=True, type=int)
    add_json(show, "the release and its signed metadata")
    show.set_defaults(handler=_release_show)

    listing = release_sub.add_parser(
        "list", help="list signed model versions, MCU images and when the metadata expires"
    )
    _repo_arguments(listing)
    add_table_options(listing, "the releases")
    listing.set_defaults(handler=_release_list)


def _repo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", required=True, type=Path, help="repository folder")
    parser.add_argument(
        "--offline-keys",
        type=Path,
        help="folder of root.key and targets.key (default: REPO/keys/offline)",
    )
    parser.add_argument(
        "--online-keys",
        type=Path,
        help="folder of snapshot/timestamp/deltas keys (default: REPO/keys/online)",
    )


def _key_dirs(args):
    from gateway.releases.keystore import KeyDirs

    return KeyDirs(
        args.offline_keys or args.repo / "keys" / "offline",
        args.online_keys or args.repo / "keys" / "online",
    )


def _keys_init(args) -> int:
    from gateway.releases.repository import Repository

    repo = Repository.init(args.repo, _key_dirs(args))
    if args.json:
        folders = {
            "repository": repo.dir,
            "offline_keys": repo.keys.offline,
            "online_keys": repo.keys.online,
            "root": repo.metadata_dir / "root.json",
        }
        print(json.dumps({key: str(path) for key, path in folders.items()}, indent=2))
        return 0
    print(f"created repository {repo.dir}")
    print(f"  offline keys (keep off the gateway): {repo.keys.offline}")
    print(f"  online keys (for the gateway):       {repo.keys.online}")
    print(f"  provision devices with:              {repo.metadata_dir / 'root.json'}")
    return 0


def _keys_rotate(args) -> int:
    from gateway.releases.repository import Repository

    repo = Repository(args.repo, _key_dirs(args))
    keyid = repo.rotate_key(args.role)
    if args.json:
        print(
            json.dumps(
                {"role": args.role, "keyid": keyid, "root_version": repo.root.signed.version}
            )
        )
        return 0
    print(f"rotated {args.role} key to {keyid[:16]} (root version {repo.root.signed.version})")
    return 0


def _release_json(release) -> dict:
    """A model release or an MCU image; ``kind`` tells them apart."""
    return {
        "kind": release.meta.to_json().get("kind", "model"),
        "name": release.name,
        "version": release.version,
        "target": release.path,
        "length": release.length,
        "sha256": release.sha256,
        "meta": release.meta.to_json(),
    }


def _check_version(args) -> None:
    """``--version`` in the range every store and device holds, named in one line if not."""
    from gateway.releases.errors import check_range
    from protocol.model_meta import MAX_VERSION

    check_range("--version", args.version, 1, MAX_VERSION)


def _print_signed(args, signed, text: str) -> None:
    print(json.dumps(_release_json(signed), indent=2) if args.json else text)


def _release_add(args) -> int:
    from gateway.releases.model_inspect import ReleaseOptions, build_model_meta, read_model
    from gateway.releases.repository import Repository, parse_duration

    _check_version(args)
    lifetime = parse_duration(args.expires)
    repo = Repository(args.repo, _key_dirs(args))
    latest = repo.latest_version(args.name)
    if args.version <= latest:  # refuse before the model is even run
        from gateway.releases.errors import ReleaseError

        raise ReleaseError(
            f"--version {args.version} of {args.name!r} is not higher than the latest ({latest})"
        )
    options = ReleaseOptions(
        samples=args.samples,
        gate_samples=args.gate_samples,
        seed=args.seed,
        reference_inputs=args.reference_inputs,
        atol=args.atol,
        latency_budget_ms=args.latency_budget_ms,
        arena_bytes=args.arena_bytes,
        hardware_tags=tuple(args.hardware_tags),
        eval_set=args.eval_set,
        min_accuracy=args.min_accuracy,
        sign_below_minimum=args.sign_below_minimum,
        probation_min_agreement=args.probation_min_agreement,
        probation_max_psi=args.probation_max_psi,
    )
    options.check()  # before the model is run
    model = read_model(args.model)
    inspected = build_model_meta(model, args.name, args.version, options, args.model)
    listed = {r.path for r in repo.releases() if r.name == args.name}
    release = repo.add_release(
        inspected.meta, model, inspected.gate, lifetime, inspected.eval_bytes, args.keep_versions
    )
    for warning in inspected.warnings:
        log.warning("release_warning", release=release.path, detail=warning)
    pruned = sorted(listed - {r.path for r in repo.releases()})
    if pruned:
        log.info("release_pruned", release=release.path, pruned=pruned, kept=args.keep_versions)
    text = (
        f"signed {release.path}: {release.length} bytes, sha256 {release.sha256[:16]}, "
        f"latency budget {release.meta.latency_budget_ms:g} ms"
    )
    if release.meta.evaluation is not None:
        text += f", {_evaluation_text(release.meta.evaluation)}"
    _print_signed(args, release, text)
    return 0


def _evaluation_text(ref) -> str:
    """One release's evaluation for people: accuracy, n, floor, and whether it passed."""
    verdict = "" if ref.passed else " BELOW MINIMUM"
    return f"accuracy {ref.accuracy:.3f} (n={ref.count}, min {ref.min_accuracy:g}){verdict}"


def _release_add_image(args) -> int:
    from gateway.releases.errors import ReleaseError
    from gateway.releases.repository import Repository, parse_duration
    from protocol.mcu_image import McuImageError, inspect_image, parse_version

    _check_version(args)
    lifetime = parse_duration(args.expires)
    repo = Repository(args.repo, _key_dirs(args))
    try:
        data = args.image.read_bytes()
        header_version = inspect_image(data)
    except OSError as exc:
        raise ReleaseError(f"cannot read image {args.image}: {exc.strerror}") from None
    except McuImageError as exc:
        raise ReleaseError(f"{args.image} is not an MCUboot image: {exc}") from None
    repo.check_new_version(args.name, args.version, "MCU image")
    major = parse_version(header_version)[0]
    if major != args.version:
        mismatch = (
            f"{args.image}: its MCUboot header says version {header_version}, so its release "
            f"version is {major}, not --version {args.version}"
        )
        if not args.force:
            raise ReleaseError(f"{mismatch} (sign it again with imgtool --version, or --force)")
        log.warning("image_version_mismatch", image=str(args.image), detail=mismatch)
    image = repo.add_image(args.name, args.version, data, lifetime)
    _print_signed(
        args,
        image,
        f"signed {image.path}: MCU image {image.meta.image_version}, {image.length} bytes, "
        f"sha256 {image.sha256[:16]}",
    )
    return 0


def _release_rollback(args) -> int:
    from gateway.releases.repository import Repository

    _check_version(args)
    release = Repository(args.repo, _key_dirs(args)).sign_rollback(args.name, args.version)
    _print_signed(args, release, f"signed {release.path} as a permitted downgrade")
    return 0


def _release_show(args) -> int:
    from gateway.releases.errors import ReleaseError
    from gateway.releases.repository import Repository

    _check_version(args)
    repo = Repository(args.repo, _key_dirs(args))
    release = next(
        (r for r in repo.releases() if (r.name, r.version) == (args.name, args.version)), None
    )
    if release is None:
        raise ReleaseError(f"{args.name}/{args.version}.tflite is not a signed model release")
    if args.json:
        print(json.dumps(_release_json(release), indent=2))
        return 0
    meta = release.meta
    lines = [
        f"{release.path}: {release.length} bytes, sha256 {release.sha256}",
        f"  input:      {_tensors(meta.inputs)}",
        f"  output:     {_tensors(meta.outputs)}",
        f"  gate:       {meta.gate.path}, {meta.gate.count} vectors, atol {meta.gate.atol:g}",
        f"  budget:     {meta.latency_budget_ms:g} ms",
    ]
    if meta.evaluation is not None:
        lines.append(f"  evaluation: {meta.evaluation.path}, {_evaluation_text(meta.evaluation)}")
    if meta.rollback:
        lines.append("  signed as a permitted downgrade")
    print("\n".join(lines))
    return 0


def _tensors(specs) -> str:
    return ", ".join(f"{s.dtype}[{'x'.join(map(str, s.shape))}]" for s in specs)


def _release_renew(args) -> int:
    from gateway.releases.repository import Repository, parse_duration

    lifetime = parse_duration(args.expires) if args.expires else None
    expires = Repository(args.repo, _key_dirs(args)).renew_offline(args.role, lifetime)
    if args.json:
        print(json.dumps({"role": args.role, "expires": expires.isoformat()}))
    else:
        print(f"renewed {args.role} metadata: expires {expires.isoformat()}")
    return 0


def _expiry(repo):
    from datetime import UTC, datetime

    from gateway.serving.renewal import Expiry

    return Expiry(repo.expiries(), datetime.now(UTC))


def _release_expiry(args) -> int:
    from gateway.releases.repository import Repository

    expiry = _expiry(Repository(args.repo, _key_dirs(args)))
    if args.json:
        print(json.dumps(expiry.to_json(), indent=2))
    else:
        _print_expiry(expiry, args.wide)
    return 0


def _print_expiry(expiry, wide: bool = False) -> None:
    print_table(
        (Column("role"), Column("expires"), Column("days left", right=True)),
        [
            (role, at.isoformat(), f"{expiry.seconds_left(role) / 86400:.1f}")
            for role, at in expiry.expires.items()
        ],
        title="metadata expiry",
        wide=wide,
    )
    for line in expiry.warnings():
        print(f"warning: {line}")


def _release_list(args) -> int:
    from gateway.releases.repository import Repository

    repo = Repository(args.repo, _key_dirs(args))
    releases, images = repo.releases(), repo.images()
    if args.json:
        print(json.dumps([_release_json(r) for r in (*releases, *images)], indent=2))
        return 0

    if releases or not images:
        print_table(
            (
                Column("model"),
                Column("version", right=True),
                Column("bytes", right=True),
                Column("sha256"),
                Column("input", narrow=False),
                Column("output", narrow=False),
                Column("budget ms", right=True),
                Column("evaluation", narrow=False),
                Column("rollback"),
            ),
            [
                (
                    r.name,
                    r.version,
                    r.length,
                    r.sha256[:12],
                    _tensors(r.meta.inputs),
                    _tensors(r.meta.outputs),
                    f"{r.meta.latency_budget_ms:g}",
                    _evaluation_text(r.meta.evaluation) if r.meta.evaluation else "",
                    "yes" if r.meta.rollback else "",
                )
                for r in releases
            ],
            title=f"releases in {args.repo}",
            wide=args.wide,
        )
        print()
    if images:
        print_table(
            (
                Column("name"),
                Column("version", right=True),
                Column("image version"),
                Column("bytes", right=True),
                Column("sha256"),
            ),
            [(i.name, i.version, i.meta.image_version, i.length, i.sha256[:12]) for i in images],
            title=f"MCU images in {args.repo}",
            wide=args.wide,
        )
        print()
    _print_expiry(_expiry(repo), args.wide)
    return 0
