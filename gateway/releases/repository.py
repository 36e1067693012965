"""The release repository: TUF metadata over signed model and MCU image targets, on disk.

Layout of a repository folder::

    metadata/   N.root.json (every version kept), root.json (the newest, to provision devices),
                N.targets.json, N.snapshot.json, N.deltas.json, timestamp.json
    targets/    <name>/<sha256>.<version>.tflite, .gate.json and .eval.npz (the labelled
                evaluation set, when the release has one), or <name>/<sha256>.<version>.bin
                for an MCU image (consistent-snapshot names)
    keys/offline/{root,targets}.key     keys/online/{snapshot,timestamp,deltas}.key

Every change writes new versioned files first and ``timestamp.json`` last: until that rename a
client still sees the previous release, so a crash or a refused input leaves the repository as
it was. Reads go through ``timestamp -> snapshot -> targets``, never through a directory listing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError

from edgefleet.fsio import atomic_write_bytes
from gateway.releases import keystore
from gateway.releases.errors import ReleaseError, check_range
from gateway.releases.keystore import KeyDirs
from protocol.gate_vectors import SignedGate
from protocol.mcu_image import KIND as MCU_IMAGE
from protocol.mcu_image import McuImageError, McuImageMeta, inspect_image
from protocol.mcu_image import target_path as image_path
from protocol.model_meta import MAX_VERSION, NAME_PATTERN, MetadataError, ModelMeta

SPEC_VERSION = "1.0.31"
DELTAS_ROLE = "deltas"
DELTAS_PATHS = ["*/deltas/*"]
DEFAULT_EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    DELTAS_ROLE: timedelta(days=30),
    "snapshot": timedelta(days=30),
    "timestamp": timedelta(days=7),
}
ONLINE_ROLES = (DELTAS_ROLE, "snapshot", "timestamp")  # the gateway re-signs these
_MODEL_PATH = re.compile(r"(?P<name>[^/]+)/(?P<version>[0-9]+)\.tflite")
_IMAGE_PATH = re.compile(r"(?P<name>[^/]+)/(?P<version>[0-9]+)\.bin")


def expiry(role: str, lifetime: timedelta | None = None) -> datetime:
    now = datetime.now(UTC).replace(microsecond=0)
    return now + (lifetime or DEFAULT_EXPIRY[role])


def parse_duration(text: str) -> timedelta:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"`` -> timedelta (positive)."""
    match = re.fullmatch(r"([0-9]+)([dhms])", text.strip())
    if not match or int(match.group(1)) == 0:
        raise ReleaseError(f"bad duration {text!r}: use a positive number with d, h, m or s")
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


@dataclass(frozen=True)
class Release:
    name: str
    version: int
    path: str
    length: int
    sha256: str
    meta: ModelMeta


@dataclass(frozen=True)
class McuImage:
    """A signed MCU image: an MCUboot image file as ``imgtool`` wrote it."""

    name: str
    version: int
    path: str
    length: int
    sha256: str
    meta: McuImageMeta


class Repository:
    """Loads the current metadata of a repository folder and writes signed changes to it."""

    def __init__(self, root_dir: Path, keys: KeyDirs | None = None):
        self.dir = Path(root_dir)
        self.keys = keys or KeyDirs(self.dir / "keys" / "offline", self.dir / "keys" / "online")
        self.metadata_dir = self.dir / "metadata"
        self.targets_dir = self.dir / "targets"
        self._load()

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def init(cls, root_dir: Path, keys: KeyDirs | None = None) -> Repository:
        """Create keys and version-1 metadata in an empty (or absent) folder."""
        root_dir = Path(root_dir)
        if (root_dir / "metadata").exists():
            raise ReleaseError(f"{root_dir}: already holds a repository (metadata/ exists)")
        keys = keys or KeyDirs(root_dir / "keys" / "offline", root_dir / "keys" / "online")
        for role in keystore.OFFLINE_ROLES + keystore.ONLINE_ROLES:
            if keys.path(role).exists():
                raise ReleaseError(f"{keys.path(role)}: key file exists; refusing to overwrite it")
        signers = {
            role: keystore.generate() for role in (*keystore.OFFLINE_ROLES, *keystore.ONLINE_ROLES)
        }
        root = Metadata(Root(expires=expiry("root"), consistent_snapshot=True))
        for role in ("root", "targets", "snapshot", "timestamp"):
            root.signed.add_key(signers[role].public_key, role)
        targets = Metadata(Targets(expires=expiry("targets")))
        targets.signed.delegations = Delegations(
            keys={},
            roles={
                DELTAS_ROLE: DelegatedRole(
                    name=DELTAS_ROLE,
                    keyids=[],
                    threshold=1,
                    terminating=True,
                    paths=DELTAS_PATHS,
                )
            },
        )
        targets.signed.add_key(signers[DELTAS_ROLE].public_key, DELTAS_ROLE)
        deltas = Metadata(Targets(expires=expiry(DELTAS_ROLE)))
        snapshot = Metadata(Snapshot(expires=expiry("snapshot")))
        snapshot.signed.meta[f"{DELTAS_ROLE}.json"] = MetaFile(version=1)
        timestamp = Metadata(Timestamp(expires=expiry("timestamp")))

        (root_dir / "metadata").mkdir(parents=True)
        (root_dir / "targets").mkdir(exist_ok=True)
        for role, signer in signers.items():
            keystore.save(signer, keys.path(role))
        for md, role in (
            (root, "root"),
            (targets, "targets"),
            (deltas, DELTAS_ROLE),
            (snapshot, "snapshot"),
        ):
            md.sign(signers[role])
        timestamp.signed.snapshot_meta = _meta_file(snapshot)
        timestamp.sign(signers["timestamp"])
        repo = cls.__new__(cls)
        repo.dir, repo.keys = root_dir, keys
        repo.metadata_dir, repo.targets_dir = root_dir / "metadata", root_dir / "targets"
        repo._write_versioned(targets, "targets")
        repo._write_versioned(deltas, DELTAS_ROLE)
        repo._write_versioned(snapshot, "snapshot")
        repo._write_root(root)
        repo._write(timestamp.to_bytes(), "timestamp.json")
        repo._load()
        return repo

    # -- reading --------------------------------------------------------------------------

    def _read(self, filename: str, kind: type) -> Metadata:
        path = self.metadata_dir / filename
        try:
            md = Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError:
            raise ReleaseError(
                f"{self.dir}: not an edgefleet repository ({path} missing)"
            ) from None
        except DeserializationError as exc:
            raise ReleaseError(f"{path}: not valid TUF metadata: {exc}") from None
        if not isinstance(md.signed, kind):
            raise ReleaseError(f"{path}: holds {md.signed.type} metadata, not {kind.type}")
        return md

    def _load(self) -> None:
        if not self.metadata_dir.is_dir():
            raise ReleaseError(f"{self.dir}: not an edgefleet repository (no metadata/ folder)")
        version = 1
        while (self.metadata_dir / f"{version + 1}.root.json").exists():
            version += 1
        self.root = self._read(f"{version}.root.json", Root)
        self.timestamp = self._read("timestamp.json", Timestamp)
        self.snapshot = self._read(
            f"{self.timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot
        )
        targets_meta = self.snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise ReleaseError(f"{self.dir}: snapshot does not list targets.json")
        self.targets = self._read(f"{targets_meta.version}.targets.json", Targets)
        deltas_meta = self.snapshot.signed.meta.get(f"{DELTAS_ROLE}.json")
        if deltas_meta is None:
            raise ReleaseError(f"{self.dir}: snapshot does not list {DELTAS_ROLE}.json")
        self.deltas = self._read(f"{deltas_meta.version}.{DELTAS_ROLE}.json", Targets)

    def reload(self) -> None:
        """Re-read the metadata (another process, such as an import, may have changed it)."""
        self._load()

    def releases(self) -> list[Release]:
        """Every signed model version, ordered by name then version."""
        found = []
        for path, target in self.targets.signed.targets.items():
            match = _MODEL_PATH.fullmatch(path)
            if not match:
                continue
            found.append(
                Release(
                    name=match["name"],
                    version=int(match["version"]),
                    path=path,
                    length=target.length,
                    sha256=target.hashes["sha256"],
                    meta=ModelMeta.from_json(target.custom),
                )
            )
        return sorted(found, key=lambda r: (r.name, r.version))

    def images(self) -> list[McuImage]:
        """Every signed MCU image version, ordered by name then version."""
        found = []
        for path, target in self.targets.signed.targets.items():
            match = _IMAGE_PATH.fullmatch(path)
            if not match or (target.custom or {}).get("kind") != MCU_IMAGE:
                continue
            found.append(
                McuImage(
                    name=match["name"],
                    version=int(match["version"]),
                    path=path,
                    length=target.length,
                    sha256=target.hashes["sha256"],
                    meta=McuImageMeta.from_json(target.custom),
                )
            )
        return sorted(found, key=lambda r: (r.name, r.version))

    def latest_version(self, name: str) -> int:
        """Models and MCU images share the versions of a name."""
        versions = [r.version for r in (*self.releases(), *self.images()) if r.name == name]
        return max(versions, default=0)

    def check_new_version(self, name: str, version: int, kind: str) -> None:
        """A new version of a name: a name is either a model or an MCU image."""
        if not NAME_PATTERN.fullmatch(name):
            raise ReleaseError(f"bad {kind} name {name!r}: use letters, digits, '_', '.', '-'")
        check_range(f"the version of {name!r}", version, 1, MAX_VERSION)
        model = kind == "model"
        if any(r.name == name for r in (self.images() if model else self.releases())):
            other, this = ("an MCU image", "a model") if model else ("a model", "an MCU image")
            raise ReleaseError(f"{name!r} is {other}; {this} needs a name of its own")
        latest = self.latest_version(name)
        if version <= latest:
            raise ReleaseError(
                f"version {version} of {name!r} is not higher than the latest ({latest})"
            )

    # -- changing ---------------------------------------------------------------------------

    def add_release(
        self,
        meta: ModelMeta,
        model: bytes,
        gate: SignedGate,
        targets_lifetime: timedelta | None = None,
        eval_bytes: bytes | None = None,
        keep_versions: int | None = None,
    ) -> Release:
        """Sign a new model version (and its gate vectors in both encodings, and the evaluation
        set its metadata names) as targets and publish it; with ``keep_versions``, versions of
        the name older than the newest that many are pruned from the metadata."""
        if keep_versions is not None:
            check_range("--keep-versions", keep_versions, 1, MAX_VERSION)
        self.check_new_version(meta.name, meta.version, "model")
        _check_eval_bytes(meta, eval_bytes)
        gate_files = _gate_files(meta, gate)
        targets_signer = keystore.load(self.keys.path("targets"))
        self._check_signer(targets_signer, "targets")
        online = self.online_signers()

        model_path = f"{meta.name}/{meta.version}.tflite"
        model_target = TargetFile.from_data(model_path, model, ["sha256"])
        model_target.unrecognized_fields["custom"] = meta.to_json()
        targets = self.targets
        for path, data in gate_files.items():
            gate_target = TargetFile.from_data(path, data, ["sha256"])
            gate_target.unrecognized_fields["custom"] = {"gate_for": model_path}
            self._store_target(gate_target, data)
            targets.signed.targets[path] = gate_target
        if meta.evaluation is not None and eval_bytes is not None:
            eval_target = TargetFile.from_data(meta.evaluation.path, eval_bytes, ["sha256"])
            eval_target.unrecognized_fields["custom"] = {"eval_for": model_path}
            self._store_target(eval_target, eval_bytes)
            targets.signed.targets[meta.evaluation.path] = eval_target
        self._store_target(model_target, model)

        targets.signed.targets[model_path] = model_target
        if keep_versions is not None:
            _prune(targets.signed.targets, meta.name, keep_versions)
        self._publish(targets, [targets_signer], online, targets_lifetime)
        return next(r for r in self.releases() if r.path == model_path)

    def add_image(
        self,
        name: str,
        version: int,
        data: bytes,
        targets_lifetime: timedelta | None = None,
    ) -> McuImage:
        """Sign an MCUboot image (as ``imgtool`` wrote it) as ``<name>/<version>.bin``, with the
        version its header carries, and publish it. The MCU checks the image's own signature;
        this signature says the operator released it."""
        try:
            image_version = inspect_image(data)
        except McuImageError as exc:
            raise ReleaseError(f"not an MCUboot image: {exc}") from None
        self.check_new_version(name, version, "MCU image")
        targets_signer = keystore.load(self.keys.path("targets"))
        self._check_signer(targets_signer, "targets")
        online = self.online_signers()
        meta = McuImageMeta(name, version, image_version, len(data))
        path = image_path(name, version)
        target = TargetFile.from_data(path, data, ["sha256"])
        target.unrecognized_fields["custom"] = meta.to_json()
        self._store_target(target, data)
        self.targets.signed.targets[path] = target
        self._publish(self.targets, [targets_signer], online, targets_lifetime)
        return next(r for r in self.images() if r.path == path)

    def sign_rollback(self, name: str, version: int) -> Release:
        """Mark a signed version as a permitted downgrade: devices running a newer version
        accept it only when the targets key says so."""
        release = next((r for r in self.releases() if (r.name, r.version) == (name, version)), None)
        if release is None:
            raise ReleaseError(f"{name}/{version}.tflite is not a signed release")
        if release.meta.rollback:
            return release
        targets_signer = keystore.load(self.keys.path("targets"))
        self._check_signer(targets_signer, "targets")
        online = self.online_signers()
        target = self.targets.signed.targets[release.path]
        target.unrecognized_fields["custom"] = dataclasses.replace(
            release.meta, rollback=True
        ).to_json()
        self._publish(self.targets, [targets_signer], online)
        return next(r for r in self.releases() if r.path == release.path)

    def add_delta(self, path: str, data: bytes, custom: dict) -> TargetFile:
        """Sign transport bytes (a delta) as a target of the delegated deltas role, with the
        gateway's online key. A device still checks what a delta rebuilds against the
        offline-signed model target."""
        if not self.targets.signed.delegations.roles[DELTAS_ROLE].is_delegated_path(path):
            raise ReleaseError(f"delta path {path!r} is outside the deltas role ({DELTAS_PATHS})")
        signer = self._deltas_signer()
        online = self.online_signers()
        target = TargetFile.from_data(path, data, ["sha256"])
        target.unrecognized_fields["custom"] = custom
        self._store_target(target, data)
        deltas = self.deltas.signed.targets
        listed = self.targets.signed.targets
        for stale in [p for p, t in deltas.items() if not _between_listed(t.custom, listed)]:
            del deltas[stale]  # its model left the targets metadata: no device is offered it
        deltas[path] = target
        _bump(self.deltas, DELTAS_ROLE, [signer])
        self._commit(self.deltas, DELTAS_ROLE, online)
        return target

    def import_targets(self, source: Repository) -> int:
        """Take in what the operator signed offline in ``source``: newer roots, then its targets
        metadata (byte for byte) and the target files it lists, re-publishing snapshot and
        timestamp with this repository's online keys. Returns the number of new targets.

        Everything is verified as a device would before anything is written: each new root by
        the previous one and by itself, the targets metadata by the newest root, each file by
        its signed length and hash.
        """
        trusted = self.root
        new_roots: list[tuple[int, bytes]] = []
        version = trusted.signed.version + 1
        while (path := source.metadata_dir / f"{version}.root.json").exists():
            data = path.read_bytes()
            candidate = Metadata.from_bytes(data)
            try:
                trusted.verify_delegate("root", candidate)
                candidate.verify_delegate("root", candidate)
            except (UnsignedMetadataError, ValueError) as exc:
                raise ReleaseError(f"{path}: not signed by the trusted root keys: {exc}") from None
            if candidate.signed.version != version:
                raise ReleaseError(f"{path}: holds root version {candidate.signed.version}")
            new_roots.append((version, data))
            trusted, version = candidate, version + 1

        incoming = source.targets
        incoming_path = source.metadata_dir / f"{incoming.signed.version}.targets.json"
        try:
            trusted.verify_delegate("targets", incoming)
        except (UnsignedMetadataError, ValueError) as exc:
            raise ReleaseError(f"{incoming_path}: not signed by the targets key: {exc}") from None
        if incoming.signed.version < self.targets.signed.version:
            raise ReleaseError(
                f"{incoming_path}: targets version {incoming.signed.version} is older than the "
                f"served {self.targets.signed.version}"
            )
        if incoming.signed.version == self.targets.signed.version and not new_roots:
            return 0
        fresh = [p for p in incoming.signed.targets if p not in self.targets.signed.targets]
        for target_path in fresh:
            _check_servable(target_path, incoming.signed.targets[target_path], incoming_path)
        self.root = trusted  # online keys are checked against the newest root
        online = self.online_signers()
        for target_path in fresh:
            target = incoming.signed.targets[target_path]
            blob = source.targets_dir / target.get_prefixed_paths()[0]
            try:
                data = blob.read_bytes()
                target.verify_length_and_hashes(data)
            except (OSError, LengthOrHashMismatchError) as exc:
                raise ReleaseError(f"{blob}: missing or not the signed bytes: {exc}") from None
            self._store_target(target, data)
        for number, data in new_roots:
            self._write(data, f"{number}.root.json")
        if new_roots:
            self._write(new_roots[-1][1], "root.json")
        self._commit(incoming, "targets", online, changed_bytes=incoming_path.read_bytes())
        return len(fresh)

    def rotate_key(self, role: str) -> str:
        """Replace a role's key through a new root that clients holding the old root accept.

        Returns the new key id. The old key co-signs the role's next metadata, so every crash
        point leaves metadata that verifies under the old root or the new one.
        """
        if role not in ("root", "targets", "snapshot", "timestamp"):
            raise ReleaseError(
                f"cannot rotate role {role!r}: use root, targets, snapshot or timestamp"
            )
        root_signer = keystore.load(self.keys.path("root"))
        self._check_signer(root_signer, "root")
        old = root_signer if role == "root" else keystore.load(self.keys.path(role))
        self._check_signer(old, role)
        new = keystore.generate()
        staged = self.keys.path(role).with_suffix(".key.next")
        keystore.save(new, staged)

        if role in ("targets", "snapshot", "timestamp"):
            online = self.online_signers()
            signers = {"targets": [keystore.load(self.keys.path("targets"))]}
            signers[role] = [old, new]
            self._publish(
                self.targets,
                signers["targets"],
                online,
                snapshot_signers=signers.get("snapshot"),
                timestamp_signers=signers.get("timestamp"),
            )
        root = self.root
        root.signed.revoke_key(old.public_key.keyid, role)
        root.signed.add_key(new.public_key, role)
        root.signed.version += 1
        root.signed.expires = expiry("root")
        root.signatures.clear()
        root.sign(new if role == "root" else root_signer, append=True)
        if role == "root":
            root.sign(old, append=True)
        self._write_root(root)
        staged.replace(self.keys.path(role))
        self._load()
        return new.public_key.keyid

    def expiries(self) -> dict[str, datetime]:
        """When each role's current metadata expires."""
        return {
            "root": self.root.signed.expires,
            "targets": self.targets.signed.expires,
            DELTAS_ROLE: self.deltas.signed.expires,
            "snapshot": self.snapshot.signed.expires,
            "timestamp": self.timestamp.signed.expires,
        }

    def renew_online(self, roles: Iterable[str], lifetimes: dict[str, timedelta]) -> list[str]:
        """Re-sign the online ``roles`` with new expiries, in one new snapshot and timestamp at
        most; returns every role re-signed (a new deltas role brings a new snapshot, a new
        snapshot a new timestamp)."""
        roles = set(roles)
        online = self.online_signers()
        if DELTAS_ROLE in roles:
            _bump(self.deltas, DELTAS_ROLE, [self._deltas_signer()], lifetimes[DELTAS_ROLE])
            self._commit(self.deltas, DELTAS_ROLE, online, lifetimes=lifetimes)
            return list(ONLINE_ROLES)
        if "snapshot" in roles:
            self._commit(None, "snapshot", online, lifetimes=lifetimes)
            return ["snapshot", "timestamp"]
        self.refresh_timestamp(lifetimes["timestamp"])
        return ["timestamp"]

    def renew_offline(self, role: str, lifetime: timedelta | None = None) -> datetime:
        """Re-sign root or targets with a new expiry (the offline keys' routine job); returns
        the new expiry. Devices take a new root through the chain of roots they trust."""
        if role == "targets":
            signer = keystore.load(self.keys.path("targets"))
            self._check_signer(signer, "targets")
            self._publish(self.targets, [signer], self.online_signers(), lifetime)
            return self.targets.signed.expires
        if role != "root":
            raise ReleaseError(f"cannot renew role {role!r}: the offline roles are root, targets")
        signer = keystore.load(self.keys.path("root"))
        self._check_signer(signer, "root")
        root = self.root
        _bump(root, "root", [signer], lifetime)
        self._write_root(root)
        self._load()
        return self.root.signed.expires

    def refresh_timestamp(self, lifetime: timedelta | None = None) -> None:
        """Re-sign the timestamp (the online key's routine job) with a new expiry."""
        signer = keystore.load(self.keys.path("timestamp"))
        self._check_signer(signer, "timestamp")
        _bump(self.timestamp, "timestamp", [signer], lifetime)
        self._write(self.timestamp.to_bytes(), "timestamp.json")
        self._load()

    # -- internals ------------------------------------------------------------------------

    def online_signers(self) -> dict[str, CryptoSigner]:
        signers = {role: keystore.load(self.keys.path(role)) for role in ("snapshot", "timestamp")}
        for role, signer in signers.items():
            self._check_signer(signer, role)
        return signers

    def _deltas_signer(self) -> CryptoSigner:
        signer = keystore.load(self.keys.path(DELTAS_ROLE))
        role = self.targets.signed.delegations.roles[DELTAS_ROLE]
        if signer.public_key.keyid not in role.keyids:
            raise ReleaseError(f"{self.keys.path(DELTAS_ROLE)}: not the deltas key")
        return signer

    def _check_signer(self, signer: CryptoSigner, role: str) -> None:
        if signer.public_key.keyid not in self.root.signed.roles[role].keyids:
            raise ReleaseError(
                f"{self.keys.path(role)}: key {signer.public_key.keyid[:12]} is not a {role} "
                f"key of this repository"
            )

    def _publish(
        self,
        targets: Metadata,
        targets_signers: Iterable[CryptoSigner],
        online: dict[str, CryptoSigner],
        targets_lifetime: timedelta | None = None,
        snapshot_signers: Iterable[CryptoSigner] | None = None,
        timestamp_signers: Iterable[CryptoSigner] | None = None,
    ) -> None:
        """Bump and sign targets, then snapshot and timestamp."""
        _bump(targets, "targets", targets_signers, targets_lifetime)
        self._commit(targets, "targets", online, snapshot_signers, timestamp_signers)

    def _commit(
        self,
        changed: Metadata | None,
        role: str,
        online: dict[str, CryptoSigner],
        snapshot_signers: Iterable[CryptoSigner] | None = None,
        timestamp_signers: Iterable[CryptoSigner] | None = None,
        changed_bytes: bytes | None = None,
        lifetimes: dict[str, timedelta] | None = None,
    ) -> None:
        """List a re-signed targets role (or none: a renewal) in a new snapshot and timestamp;
        timestamp.json is written last, so until then clients see the previous state.
        ``changed_bytes`` keeps metadata signed elsewhere byte for byte."""
        lifetimes = lifetimes or {}
        snapshot = self.snapshot
        if changed is not None:
            snapshot.signed.meta[f"{role}.json"] = MetaFile(version=changed.signed.version)
        _bump(
            snapshot,
            "snapshot",
            snapshot_signers or [online["snapshot"]],
            lifetimes.get("snapshot"),
        )
        timestamp = self.timestamp
        timestamp.signed.snapshot_meta = _meta_file(snapshot)
        _bump(
            timestamp,
            "timestamp",
            timestamp_signers or [online["timestamp"]],
            lifetimes.get("timestamp"),
        )

        if changed is not None:
            data = changed_bytes or changed.to_bytes()
            self._write(data, f"{changed.signed.version}.{role}.json")
        self._write_versioned(snapshot, "snapshot")
        self._write(timestamp.to_bytes(), "timestamp.json")
        self._load()

    def _store_target(self, target: TargetFile, data: bytes) -> None:
        for prefixed in target.get_prefixed_paths():
            path = self.targets_dir / prefixed
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)

    def _write(self, data: bytes, filename: str) -> None:
        atomic_write_bytes(self.metadata_dir / filename, data)

    def _write_versioned(self, md: Metadata, role: str) -> None:
        self._write(md.to_bytes(), f"{md.signed.version}.{role}.json")

    def _write_root(self, root: Metadata) -> None:
        data = root.to_bytes()
        self._write(data, f"{root.signed.version}.root.json")
        self._write(data, "root.json")


def _check_eval_bytes(meta: ModelMeta, data: bytes | None) -> None:
    """The evaluation set given is the one the metadata names, or neither is there."""
    ref = meta.evaluation
    if ref is None and data is None:
        return
    if ref is None or data is None:
        raise ReleaseError(f"{meta.name}/{meta.version}: evaluation set and metadata do not match")
    if (len(data), hashlib.sha256(data).hexdigest()) != (ref.length, ref.sha256):
        raise ReleaseError(f"{ref.path}: not the evaluation set the model metadata names")


def _between_listed(custom: object, listed: dict[str, TargetFile]) -> bool:
    """Whether a signed delta's source and target models are both still listed."""
    if not isinstance(custom, dict):
        return False
    return custom.get("from") in listed and custom.get("to") in listed


def _prune(targets: dict[str, TargetFile], name: str, keep: int) -> None:
    """Drop the versions of model ``name`` older than its newest ``keep`` from ``targets``,
    with the gate vectors and evaluation sets signed for them, so the metadata every device
    fetches stops growing with each release. A version signed as a rollback stays. The files
    stay on disk; a device still running a dropped version gets full models, not deltas, and
    keeps what was signed about it beside its slot."""
    models = sorted(
        (int(match["version"]), path)
        for path in targets
        if (match := _MODEL_PATH.fullmatch(path)) and match["name"] == name
    )
    older = [path for _, path in models[: max(0, len(models) - keep)]]
    dropped = {path for path in older if not targets[path].custom.get("rollback")}
    for path, target in list(targets.items()):
        custom = target.custom if isinstance(target.custom, dict) else {}
        if path in dropped or {custom.get("gate_for"), custom.get("eval_for")} & dropped:
            del targets[path]


def _gate_files(meta: ModelMeta, gate: SignedGate) -> dict[str, bytes]:
    """The gate vectors' targets by path: each encoding the metadata names, checked against
    the hash it signs."""
    named = [(meta.gate.path, meta.gate.sha256, gate.full_bytes())]
    if meta.gate.compact is not None:
        named.append((meta.gate.compact.path, meta.gate.compact.sha256, gate.compact_bytes()))
    for path, sha256, data in named:
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ReleaseError(f"{path}: not the gate vectors the model metadata names")
    return {path: data for path, _, data in named}


def _check_servable(path: str, target: TargetFile, source: Path) -> None:
    """Refuse a signed target the gateway could not serve or roll out: a version out of range,
    or ML metadata a device would refuse (signed by an older or foreign tool)."""
    match = _MODEL_PATH.fullmatch(path) or _IMAGE_PATH.fullmatch(path)
    if match is None:
        return
    if not 1 <= int(match["version"]) <= MAX_VERSION:
        raise ReleaseError(f"{source}: {path}: versions run from 1 to {MAX_VERSION}")
    try:
        if path.endswith(".tflite"):
            ModelMeta.from_json(target.custom)
        elif (target.custom or {}).get("kind") == MCU_IMAGE:
            McuImageMeta.from_json(target.custom)
    except (MetadataError, McuImageError) as exc:
        raise ReleaseError(f"{source}: {path}: {exc}") from None


def _bump(
    md: Metadata, role: str, signers: Iterable[CryptoSigner], lifetime: timedelta | None = None
) -> None:
    md.signed.version += 1
    md.signed.expires = expiry(role, lifetime)
    _sign(md, signers)


def _sign(md: Metadata, signers: Iterable[CryptoSigner]) -> None:
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)


def _meta_file(snapshot: Metadata) -> MetaFile:
    return MetaFile(version=snapshot.signed.version)
