"""The light host's control lines: anything that is not a valid command is answered with one
error line naming what is wrong, and the host keeps serving; its devices' exits come back."""

from __future__ import annotations

import json
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.fleet.light_host import MAX_LINE_BYTES, Command, ControlError, parse_command

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(st.binary(max_size=300))
def test_any_bytes_are_a_command_or_one_clear_line(raw):
    try:
        command = parse_command(raw)
    except ControlError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(command, Command)


@given(
    st.dictionaries(
        st.sampled_from(["op", "device", "config", "cut_file", "x"]),
        st.sampled_from(["start", "stop", "cut", "dev1", "", "a b", "/p"]) | JSON,
    )
)
def test_any_json_object_is_a_command_or_one_clear_line(data):
    try:
        command = parse_command(json.dumps(data).encode())
    except ControlError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert command.op in ("start", "stop", "cut") and command.device == data["device"]
        if command.op == "start":
            assert command.config is not None and command.cut_file is not None


def test_a_start_needs_its_paths():
    assert parse_command(b'{"op": "cut", "device": "dev001"}') == Command("cut", "dev001")
    for line, message in (
        (b'{"op": "start", "device": "dev001"}', "start dev001: 'config' must be a path"),
        (b'{"op": "fly", "device": "dev001"}', "unknown op 'fly'"),
        (b'{"op": "stop", "device": "../x"}', "stop: 'device' must be a device id"),
        (b"[1]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (b"[" * 5000, "not JSON"),  # deeper than the decoder recurses
        (b" " * (MAX_LINE_BYTES + 1), "longer than"),
    ):
        try:
            parse_command(line)
        except ControlError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{line!r} was taken")


def test_the_host_answers_bad_lines_and_keeps_serving(tmp_path):
    host = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim.fleet.light_host"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def ask(line: str) -> dict:
        host.stdin.write(line + "\n")
        host.stdin.flush()
        return json.loads(host.stdout.readline())

    try:
        assert ask("nonsense") == {"error": "control line is not JSON"}
        assert ask(json.dumps({"op": "fly", "device": "dev001"}))["error"].startswith(
            "unknown op 'fly'"
        )
        assert ask(json.dumps({"op": "cut", "device": "ghost"})) == {
            "error": "cut ghost: not running"
        }
        assert ask("x" * (5 * MAX_LINE_BYTES)) == {
            "error": f"control line longer than {MAX_LINE_BYTES} bytes"
        }
        start = {"op": "start", "device": "dev001", "config": str(tmp_path / "missing.toml")}
        # still serving: a device starts, and its exit comes back (no configuration: 2)
        assert ask(json.dumps(start | {"cut_file": str(tmp_path / "cut")})) == {
            "device": "dev001",
            "exit": 2,
        }
        host.stdin.close()
        assert host.wait(30) == 0
        assert "missing.toml" in host.stderr.read()
    finally:
        host.kill()
        host.wait()
