"""Reading a daemon's TOML configuration: typed, range-checked lookups that name the file and
the key when they fail, and a refusal of keys nobody reads (a typo is an error, not a default).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import structlog

from edgefleet.errors import UserError

log = structlog.get_logger()

MAX_TEXT = 4096


def read(path: Path, label: str) -> dict:
    """The parsed file, or a one-line ``UserError`` starting with ``label``."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{label}: cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{label}: not valid TOML: {exc}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise UserError(f"{label}: not valid TOML: nested too deep") from None


class Table:
    """One TOML table. Relative paths in it are relative to ``base`` (the file's folder)."""

    def __init__(self, label: str, path: str, data: Any, base: Path):
        self.label, self.path, self.base = label, path, base
        if not isinstance(data, dict):
            self.fail("", "must be a table")
        self.data = data
        self.used: set[str] = set()

    def fail(self, key: str, message: str) -> None:
        name = f"{self.path}.{key}" if self.path and key else (self.path or key)
        raise UserError(f"{self.label}: key {name}: {message}")

    def table(self, key: str) -> Table:
        self.used.add(key)
        path = f"{self.path}.{key}" if self.path else key
        return Table(self.label, path, self.data.get(key, {}), self.base)

    def tables(self, key: str, limit: int) -> list[Table]:
        """An array of tables (``[[key]]``), each named ``key[i]`` in errors; absent: empty."""
        self.used.add(key)
        items = self.data.get(key, [])
        if not isinstance(items, list):
            self.fail(key, f"must be an array of tables ([[{key}]])")
        if len(items) > limit:
            self.fail(key, f"at most {limit} tables")
        path = f"{self.path}.{key}" if self.path else key
        return [Table(self.label, f"{path}[{i}]", item, self.base) for i, item in enumerate(items)]

    def value(self, key: str, kind: type, default: Any = ..., lo=None, hi=None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                self.fail(key, "is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        takes_bool = bool in getattr(kind, "__args__", (kind,))
        if not isinstance(value, kind) or (isinstance(value, bool) and not takes_bool):
            wanted = getattr(kind, "__name__", str(kind).replace(" | ", " or "))
            self.fail(key, f"must be a {wanted}, not {type(value).__name__}")
        if lo is not None and value < lo:
            self.fail(key, f"must be >= {lo}")
        if hi is not None and value > hi:
            self.fail(key, f"must be <= {hi}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            self.fail(key, "is too long")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.value(key, str, default)
        if value not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}")
        return value

    def path_value(
        self, key: str, default: Path | None = None, required: bool = False
    ) -> Path | None:
        text = self.value(key, str, ... if required else None)
        if text is None:
            return default
        if not text:
            self.fail(key, "must not be empty")
        path = Path(text)
        return path if path.is_absolute() else self.base / path

    def existing_file(self, key: str, required: bool = False) -> Path | None:
        path = self.path_value(key, required=required)
        if path is not None and not path.is_file():
            self.fail(key, f"no such file {path}")
        return path

    def renamed(self, old: str, new: str) -> None:
        """Read ``old``, an earlier name of ``new``, as ``new``, with one warning naming it."""
        if old not in self.data:
            return
        self.used.add(old)
        if new in self.data:
            self.fail(old, f"is the old name of {new}; give only {new}")
        name = f"{self.path}.{{}}" if self.path else "{}"
        log.warning(
            "config_key_renamed", file=self.label, key=name.format(old), use=name.format(new)
        )
        self.data[new] = self.data[old]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            self.fail(unknown[0], "unknown key")


def dumps(tables: dict[str, Any]) -> str:
    """Write the configs edgefleet generates (simulated devices, a site's gateway) as TOML with
    tomli-w; ``{"table": [{...}, ...]}`` becomes an array of tables. Paths are written as text,
    which tomli-w does not do by itself."""
    import tomli_w  # only for writing: a daemon that reads its configuration never loads it

    return tomli_w.dumps(_plain(tables))


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
