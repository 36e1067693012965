"""What a device trusts: TUF metadata refreshed from the gateway's repository (or a local copy,
such as a USB stick), checked against the root the device was provisioned with.

The metadata folder is the device's memory of what it has seen; it must never be wiped, because
the rollback and freeze protections live in it. This module is imported only by the update work,
which runs in a child process: python-tuf costs ~25 MB that the long-running daemon never pays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import Request, urlopen

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from agent.updater.encoding import ACCEPT_GZIP, EncodingError, decoded_chunks
from protocol.model_meta import MetadataError, ModelMeta

CHUNK = 64 * 1024
# What one metadata answer may inflate to, whatever python-tuf's own limit for the file (it stops
# reading at that limit, which is far lower: 16 KB for timestamp.json, 5 MB for targets).
MAX_DECODED_BYTES = 16 * 1024 * 1024
TIMEOUT_S = 30.0


# Transport and freshness: what a later refresh may get past (stale, replayed or expired
# metadata, bytes whose hash or length do not match, a target the served metadata does not list
# yet, an unreachable repository). Forged signatures and malformed metadata are not among them.
TRANSIENT_REASONS = frozenset(
    {"unreachable", "expired", "rollback", "hash-mismatch", "too-long", "unknown-target"}
)


class TrustError(Exception):
    """The repository could not prove that a target is what the offline keys signed."""

    def __init__(self, message: str, reason: str = "untrusted"):
        super().__init__(message)
        self.reason = reason

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT_REASONS


@dataclass(frozen=True)
class VerifiedTarget:
    path: str
    length: int
    sha256: str
    custom: dict[str, Any]

    def model_meta(self) -> ModelMeta:
        try:
            return ModelMeta.from_json(self.custom)
        except MetadataError as exc:
            raise TrustError(
                f"{self.path}: signed model metadata is malformed: {exc}", "bad-metadata"
            ) from None


class DirectoryFetcher(FetcherInterface):
    """Serves ``file://`` URLs from a local copy of a repository."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = Path(unquote(urlparse(url).path))
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            # The client probes for newer roots and stops only on 403/404.
            raise tuf_errors.DownloadHTTPError(f"{path} not found", 404) from None
        except OSError as exc:
            raise tuf_errors.DownloadError(f"{path}: {exc.strerror}") from None
        with handle:
            while chunk := handle.read(CHUNK):
                yield chunk


class HttpFetcher(FetcherInterface):
    """Fetches metadata over HTTP asking for gzip (a sixth of the bytes of JSON), inflated one
    chunk at a time: python-tuf counts the decoded bytes against its length limits and stops
    reading there, so a gzip bomb costs a chunk, not its inflated size. A server that ignores
    ``Accept-Encoding`` answers plain bytes, which pass through."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = urlopen(Request(url, headers=ACCEPT_GZIP), timeout=TIMEOUT_S)
        except HTTPError as exc:
            # The client probes for newer roots and stops only on 403/404.
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP {exc.code}", exc.code) from None
        except TimeoutError as exc:
            raise tuf_errors.SlowRetrievalError(f"{url}: {exc}") from None
        except (URLError, OSError) as exc:
            raise tuf_errors.DownloadError(f"{url}: {exc}") from None
        return self._chunks(url, response)

    @staticmethod
    def _chunks(url: str, response: Any) -> Iterator[bytes]:  # an http.client.HTTPResponse
        with response:
            try:
                yield from decoded_chunks(response.read, response.headers, CHUNK, MAX_DECODED_BYTES)
            except EncodingError as exc:
                raise tuf_errors.DownloadError(f"{url}: {exc}") from None
            except TimeoutError as exc:
                raise tuf_errors.SlowRetrievalError(f"{url}: {exc}") from None
            except OSError as exc:
                raise tuf_errors.DownloadError(f"{url}: {exc}") from None


def _base_urls(repository: str) -> tuple[str, str, FetcherInterface]:
    if repository.startswith(("http://", "https://")):
        base = repository.rstrip("/")
        return f"{base}/metadata/", f"{base}/targets/", HttpFetcher()
    root = Path(repository).resolve()
    if not (root / "metadata").is_dir():
        raise TrustError(
            f"{repository}: not a repository (no metadata/ folder)", "not-a-repository"
        )
    return f"{root.as_uri()}/metadata/", f"{root.as_uri()}/targets/", DirectoryFetcher()


_REASONS = {
    tuf_errors.ExpiredMetadataError: "expired",
    tuf_errors.BadVersionNumberError: "rollback",
    tuf_errors.UnsignedMetadataError: "bad-signature",
    tuf_errors.LengthOrHashMismatchError: "hash-mismatch",
    tuf_errors.DownloadLengthMismatchError: "too-long",
    tuf_errors.DownloadError: "unreachable",
    tuf_errors.RepositoryError: "untrusted",
}


def _wrap(exc: Exception, what: str) -> TrustError:
    reason = next((r for cls, r in _REASONS.items() if isinstance(exc, cls)), "untrusted")
    hint = " (check the device clock)" if reason == "expired" else ""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return TrustError(f"{what}: {type(exc).__name__}: {detail}{hint}", reason)


class TrustedRepository:
    """One refresh of a repository's metadata, and verified access to its targets."""

    def __init__(
        self,
        metadata_dir: Path,
        repository: str,
        trusted_root: Path | None = None,
        config: UpdaterConfig | None = None,
    ):
        self.metadata_dir = Path(metadata_dir)
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = None
        if not (self.metadata_dir / "root.json").exists():
            if trusted_root is None:
                raise TrustError(
                    f"{metadata_dir}: no trusted root yet; provision root.json", "not-provisioned"
                )
            try:
                bootstrap = Path(trusted_root).read_bytes()
                json.loads(bootstrap)
            except (OSError, ValueError) as exc:
                raise TrustError(
                    f"{trusted_root}: unreadable trusted root: {exc}", "not-provisioned"
                ) from None
        metadata_url, self._targets_url, fetcher = _base_urls(repository)
        try:
            self._updater = Updater(
                str(self.metadata_dir),
                metadata_url,
                None,
                self._targets_url,
                fetcher,
                config,
                bootstrap=bootstrap,
            )
            self._updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError, ValueError) as exc:
            raise _wrap(exc, f"refresh from {repository}") from None

    def _info(self, path: str) -> TargetFile:
        try:
            info = self._updater.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise _wrap(exc, f"metadata for {path}") from None
        if info is None:
            raise TrustError(f"{path}: not a signed target of this repository", "unknown-target")
        return info

    def target(self, path: str) -> VerifiedTarget:
        """Signed facts about a target, or ``TrustError`` when no trusted role lists it."""
        info = self._info(path)
        return VerifiedTarget(path, info.length, info.hashes["sha256"], dict(info.custom))

    def download(self, path: str, destination: Path) -> VerifiedTarget:
        """Fetch a target into ``destination`` (written only once its length and hash match)."""
        info = self._info(path)
        try:
            self._updater.download_target(info, filepath=str(destination))
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise _wrap(exc, f"download of {path}") from None
        return VerifiedTarget(path, info.length, info.hashes["sha256"], dict(info.custom))

    def check(self, path: str, data: bytes | bytearray) -> VerifiedTarget:
        """Check bytes obtained another way (a delta's result, which is a bytearray: it is
        rebuilt in place; a resumed download). python-tuf hashes ``bytes`` or reads a file."""
        info = self._info(path)
        try:
            info.verify_length_and_hashes(data if isinstance(data, bytes) else bytes(data))
        except tuf_errors.LengthOrHashMismatchError as exc:
            raise _wrap(exc, path) from None
        return VerifiedTarget(path, info.length, info.hashes["sha256"], dict(info.custom))


def verify_target(
    metadata_dir: Path, repository: str, path: str, trusted_root: Path | None = None
) -> VerifiedTarget:
    """Refresh metadata and return the verified facts about one target."""
    return TrustedRepository(metadata_dir, repository, trusted_root).target(path)
