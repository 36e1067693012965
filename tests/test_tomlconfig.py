"""The configs edgefleet writes (simulated devices, a site's gateway, a provisioned device) read
back as they were written: nested tables, arrays of tables, paths."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edgefleet import tomlconfig


def test_written_tables_read_back_as_they_were():
    tables = {
        "device": {"id": "dev1", "site": "s1"},
        "update": {"trusted_root": Path("/etc/root.json"), "probation": {"window_s": 3.0}},
        "mcu": [{"name": "sensor", "ports": ["a", "b"]}, {"name": "motor", "ports": []}],
        "quoted": {"text": 'a "quote" and a \\ backslash\nnext line', "on": True, "n": 2**62},
    }
    back = tomllib.loads(tomlconfig.dumps(tables))
    assert back["update"] == {"trusted_root": "/etc/root.json", "probation": {"window_s": 3.0}}
    assert back["mcu"] == [{"name": "sensor", "ports": ["a", "b"]}, {"name": "motor", "ports": []}]
    assert back["quoted"] == tables["quoted"] and back["device"] == tables["device"]
