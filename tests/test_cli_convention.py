"""Every `edgefleet` command speaks one dialect. The walk goes over the real parser
(build_parser()), so a command added later is held to the same rules: `--json` for a result,
defaults in `--help`, global options before or after the command, the daemons' configuration
found without `--config`, tables that read well piped and on a terminal, snake_case log events,
JSON logs off a terminal, and errors in one line."""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edgefleet import logs
from edgefleet.cli import build_parser, main
from edgefleet.commandline import every_parser
from edgefleet.models import model_path
from edgefleet.runtime_output import runtime_output_logged
from edgefleet.tables import Column, print_table

REPO = Path(__file__).resolve().parents[1]
EDGEFLEET = Path(sys.executable).parent / "edgefleet"
# Commands that run until stopped: they print no result (mcu-sim and cloud serve print where
# they serve).
DAEMONS = {("gateway", "run"), ("agent", "run"), ("mcu-sim",), ("cloud", "serve")}
BOX = re.compile("[\u2500-\u257f]")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser that runs something: a leaf, or one whose subcommand is optional."""
    found = []
    for words, parser in every_parser(build_parser()):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if words and (not subs or not subs[0].required):
            found.append((words, parser))
    return found


COMMANDS = commands()
IDS = [" ".join(words) for words, _ in COMMANDS]
PARSERS = list(every_parser(build_parser()))
PARSER_IDS = [" ".join(words) or "edgefleet" for words, _ in PARSERS]


def test_the_walk_finds_every_command():
    names = set(IDS)
    assert {"rollout start", "gateway status", "keys init", "release list", "flash"} <= names
    assert "gateway dead-letters resend" in names and len(names) >= 25


@pytest.mark.parametrize(("words", "parser"), COMMANDS, ids=IDS)
def test_a_command_that_prints_a_result_has_json(words, parser):
    options = {s for a in parser._actions for s in a.option_strings}
    if words in DAEMONS:
        assert "--json" not in options
    else:
        assert "--json" in options, f"edgefleet {' '.join(words)} has no --json"


@pytest.mark.parametrize(("words", "parser"), PARSERS, ids=PARSER_IDS)
def test_every_default_is_shown_in_help(words, parser):
    text = "".join(parser.format_help().split())  # argparse wraps lines at hyphens too
    for action in parser._actions:
        default = action.default
        if (
            not action.option_strings
            or action.help == argparse.SUPPRESS
            or any(default is nothing for nothing in (None, False, argparse.SUPPRESS))
            or (isinstance(default, list | str) and not default)
        ):
            continue
        shown = "".join(f"(default: {default})".split())
        assert shown in text, (words, action.option_strings)


def test_rollout_start_shows_its_plan_defaults():
    parser = dict(COMMANDS)[("rollout", "start")]
    text = " ".join(parser.format_help().split())
    assert "(default: 1,10,50,100)" in text and "(default: 10m)" in text


@pytest.mark.parametrize(("words", "parser"), PARSERS, ids=PARSER_IDS)
def test_global_options_are_accepted_on_every_command(words, parser):
    options = {s for a in parser._actions for s in a.option_strings}
    assert {"--log-level", "--log-format"} <= options


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "debug", "--log-format", "json", "rollout", "status", "r1"],
        ["rollout", "--log-level", "debug", "status", "r1", "--log-format", "json"],
        ["rollout", "status", "r1", "--log-level", "debug", "--log-format", "json"],
    ],
)
def test_global_options_before_or_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert (args.log_level, args.log_format, args.id) == ("debug", "json", "r1")


def test_global_options_keep_their_defaults_when_absent():
    args = build_parser().parse_args(["rollout", "status"])
    assert (args.log_level, args.log_format) == ("info", None)


@pytest.mark.parametrize(
    ("words", "parser"),
    [(w, p) for w, p in COMMANDS if w[0] in ("gateway", "rollout", "agent")],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else "",
)
def test_daemon_commands_find_their_config_without_the_option(words, parser):
    config = [a for a in parser._actions if "--config" in a.option_strings]
    if words[-1] == "install-service":
        assert not config
        return
    assert config and not config[0].required, words
    text = " ".join(parser.format_help().split())
    if words[-1] != "resend":
        assert "/etc/edgefleet/" in text and "$EDGEFLEET_" in text, words


@pytest.mark.parametrize(
    ("argv", "variable", "role"),
    [
        (["gateway", "status"], "EDGEFLEET_GATEWAY_CONFIG", "gateway"),
        (["rollout", "pause", "r1"], "EDGEFLEET_GATEWAY_CONFIG", "gateway"),
        (["agent", "run"], "EDGEFLEET_AGENT_CONFIG", "agent"),
    ],
)
def test_a_missing_config_is_one_line_naming_path_and_variable(
    argv, variable, role, monkeypatch, capsys, tmp_path
):
    monkeypatch.delenv(variable, raising=False)
    if not Path(f"/etc/edgefleet/{role}.toml").exists():
        assert main(argv) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"edgefleet: error: no {role} configuration at /etc/edgefleet/{role}.toml "
            f"(--config not given, ${variable} not set)"
        ]
    missing = tmp_path / "nowhere.toml"
    monkeypatch.setenv(variable, str(missing))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgefleet: error: no {role} configuration at {missing} (from ${variable})"]


def test_the_variable_names_the_config_the_command_reads(monkeypatch, tmp_path, capsys):
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nsite = "s1"\ncolour = "red"\n')
    monkeypatch.setenv("EDGEFLEET_GATEWAY_CONFIG", str(config))
    assert main(["gateway", "status"]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "no gateway configuration" not in err  # it was read


COLUMNS = (
    Column("device"),
    Column("state"),
    Column("detail", narrow=False),
    Column("count", right=True),
)
ROWS = [("cam-1", "online", "two\nlines", 3), ("pump-7", None, "x" * 120, 12)]


def test_a_piped_table_is_tab_separated_text():
    out = io.StringIO()
    print_table(COLUMNS, ROWS, title="devices", file=out)
    lines = out.getvalue().splitlines()
    assert lines == [
        "device\tstate\tdetail\tcount",
        "cam-1\tonline\ttwo, lines\t3",
        "pump-7\t-\t" + "x" * 120 + "\t12",
    ]


def test_a_table_on_a_terminal_fits_80_columns_unless_wide():
    out = io.StringIO()
    print_table(COLUMNS, ROWS, title="devices", file=out, terminal=True)
    lines = ANSI.sub("", out.getvalue()).splitlines()
    assert max(map(len, lines)) <= 80
    assert all(name in out.getvalue() for name in ("device", "state", "count"))
    assert "detail" not in out.getvalue()
    wide = io.StringIO()
    print_table(COLUMNS, ROWS, file=wide, terminal=True, wide=True)
    assert "detail" in wide.getvalue()


DEVICE = {
    "device": "cam-1",
    "state": "online",
    "last_seen": 1_700_000_000.0,
    "agent_version": "0.1.0",
    "model": "kws",
    "model_version": 2,
    "update_state": "COMMITTED",
    "health": "ok",
    "drift_alarm": False,
    "drift_alarms": 0,
    "spool_depth": 3,
    "spool_dropped": 0,
    "records": 120,
    "mcus": [{"name": "sensor", "version": "1.0.0", "state": "confirmed"}],
}
ROLLOUT_VIEW = {
    "id": "r1",
    "model": "kws",
    "version": 2,
    "state": "paused",
    "stage": 0,
    "reason": "failure rate 0.5 above 0.05",
    "plan": {
        "stages": [50, 100],
        "soak_s": 600.0,
        "max_failure_rate": 0.05,
        "auto_rollback": False,
        "blocked_deadline_s": 3600.0,
    },
    "stages": [
        {
            "stage": 0,
            "percent": 50,
            "devices": 2,
            "pending": 0,
            "offered": 0,
            "blocked": 0,
            "committed": 1,
            "failed": 1,
        },
    ],
    "progress": [{"device": "cam-1", "state": "failed", "detail": "health gate failed"}],
    "skipped": [{"device": "pump-7", "reason": "offline"}],
}
LETTER = {
    "id": 1,
    "at": 1_700_000_000.0,
    "source": "mqtt",
    "kind": "status",
    "reason": "range",
    "size": 512,
    "detail": "integer of 400 digits",
}


def printers():
    from gateway import daemon_commands
    from gateway.devices import table as device_table
    from gateway.rollouts import commands as rollouts

    row = {"id": "r1", "model": "kws", "version": 2, "state": "running", "stage": 1}
    row |= {"devices": 10, "committed": 4, "failed": 0, "blocked": 1}
    stats = {"entries": 1, "records": 0, "dropped": 0, "dropped_records": 0}
    return {
        "devices": lambda wide: device_table.print_table([DEVICE] * 3, wide),
        "rollout list": lambda wide: rollouts.print_list([row], wide),
        "rollout detail": lambda wide: rollouts.print_detail(ROLLOUT_VIEW, wide),
        "dead letters": lambda wide: daemon_commands.print_dead_letters([LETTER], stats, wide),
    }


@pytest.mark.parametrize("name", list(printers()))
def test_every_command_table_is_plain_when_piped(name, capsys):
    printers()[name](False)
    out = capsys.readouterr().out
    assert not BOX.search(out) and "\t" in out, out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("name", list(printers()))
def test_every_command_table_fits_a_terminal(name, monkeypatch):
    narrow, wide = Terminal(), Terminal()
    monkeypatch.setattr(sys, "stdout", narrow)
    printers()[name](False)
    monkeypatch.setattr(sys, "stdout", wide)
    printers()[name](True)
    assert BOX.search(narrow.getvalue())
    assert max(map(len, ANSI.sub("", narrow.getvalue()).splitlines())) <= 80
    assert len(ANSI.sub("", wide.getvalue())) >= len(ANSI.sub("", narrow.getvalue()))


def test_release_list_and_expiry_are_plain_when_piped(tmp_path, capsys):
    repo = tmp_path / "repo"
    assert main(["keys", "init", "--repo", str(repo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repository"] == str(repo)
    for argv in (
        ["release", "list", "--repo", str(repo)],
        ["release", "expiry", "--repo", str(repo)],
    ):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert not BOX.search(out) and "role\texpires\tdays left" in out, out


# snake_case, optionally under a dotted namespace (mcu.power_cut)
EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}


def log_events(folder: str):
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                yield f"{path.relative_to(REPO)}:{node.lineno}", node.args[0].value


@pytest.mark.parametrize("folder", ["agent", "gateway", "edgefleet", "firmware_sim", "protocol"])
def test_log_event_names_are_snake_case(folder):
    found = list(log_events(folder))
    bad = [(where, name) for where, name in found if not EVENT_NAME.match(name)]
    assert not bad
    assert found or folder == "protocol"


def test_library_log_lines_are_json_off_a_terminal():
    import logging

    import structlog

    stream = io.StringIO()
    logs.configure("info", stream=stream)
    logging.getLogger("aiohttp.server").error("Error handling request", exc_info=ValueError("x"))
    structlog.get_logger().info("gateway_running", site="s1")
    logging.getLogger("a_library").info("Received PUBACK: a library's chatter, not written")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["event"], x["level"]) for x in lines] == [
        ("Error handling request", "error"),
        ("gateway_running", "info"),
    ]
    assert lines[0]["logger"] == "aiohttp.server" and "ValueError: x" in lines[0]["exception"]
    debug = io.StringIO()
    logs.configure("debug", stream=debug)
    logging.getLogger("a_library").info("Received PUBACK")
    assert json.loads(debug.getvalue())["event"] == "Received PUBACK"


def test_log_format_console_is_chosen_explicitly():
    stream = io.StringIO()
    logs.configure("info", stream=stream, fmt="console")
    import structlog

    structlog.get_logger().info("gateway_running", site="s1")
    assert "gateway_running" in stream.getvalue() and not stream.getvalue().startswith("{")


def test_runtime_output_is_kept_off_stderr(capfd):
    from ai_edge_litert.interpreter import Interpreter

    stream = io.StringIO()
    logs.configure("debug", stream=stream)
    with runtime_output_logged("litert"):
        interpreter = Interpreter(model_path=str(model_path("kws_int8_v1")))
        interpreter.allocate_tensors()  # LiteRT's delegate line, once per process
        os.write(2, b"WARNING: a line the C++ core writes past Python\n")
        sys.stderr.write("a line of another thread\n")
    assert capfd.readouterr().err == "a line of another thread\n"
    logged = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [x["event"] for x in logged] == ["runtime_output"]
    assert "WARNING: a line the C++ core writes past Python" in logged[0]["lines"]
    assert logged[0]["source"] == "litert"


def test_runtime_output_caught_by_two_threads_at_once_leaves_stderr_as_it_was(capfd):
    """Many agents in one process load models side by side: the second catch must not save
    the first one's sink as stderr and put it back last."""
    before = os.fstat(2)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with runtime_output_logged("one"):
            first_in.set()
            second_in.wait(0.5)  # with one catch at a time, the second is not in yet
        first_out.set()

    def second() -> None:
        first_in.wait()
        with runtime_output_logged("two"):
            second_in.set()
            first_out.wait(0.5)  # the first ends its catch before the second does

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    sys.stderr.write("still here\n")
    assert capfd.readouterr().err == "still here\n"


def test_a_cli_error_after_the_model_loads_is_one_line(tmp_path):
    repo = tmp_path / "repo"
    assert main(["keys", "init", "--repo", str(repo)]) == 0
    np.save(tmp_path / "bad.npy", np.zeros((4, 3), np.float32))  # not the model's input shape
    done = subprocess.run(
        [str(EDGEFLEET), "release", "add", str(model_path("kws_int8_v1")), "--repo", str(repo),
         "--name", "kws", "--version", "1", "--reference-inputs", str(tmp_path / "bad.npy")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgefleet: error:"), done.stderr
