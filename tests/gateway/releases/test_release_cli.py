"""`edgefleet keys` and `edgefleet release` as an operator uses them, including every refusal:
one line naming the problem, exit code 2, and the repository exactly as it was."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet import fsio
from edgefleet.cli import main
from edgefleet.models import model_path
from gateway.releases.repository import Repository
from protocol.model_meta import GateVectors


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert main(["keys", "init", "--repo", str(path)]) == 0
    assert (
        main(
            [
                "release",
                "add",
                "--repo",
                str(path),
                str(model_path("kws_int8_v1")),
                "--name",
                "kws",
                "--version",
                "1",
                "--samples",
                "8",
            ]
        )
        == 0
    )
    return path


def add(repo_dir: Path, model, version="2", *extra) -> int:
    return main(
        [
            "release",
            "add",
            "--repo",
            str(repo_dir),
            str(model),
            "--name",
            "kws",
            "--version",
            version,
            "--samples",
            "8",
            *extra,
        ]
    )


def refused(capsys, code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err


def test_list_shows_what_was_signed(repo_dir, capsys):
    capsys.readouterr()
    assert add(repo_dir, model_path("kws_int8_v2_head")) == 0
    capsys.readouterr()
    assert main(["release", "list", "--repo", str(repo_dir), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["version"]) for r in listed] == [("kws", 1), ("kws", 2)]
    meta = listed[1]["meta"]
    assert meta["inputs"][0]["dtype"] == "int8"
    assert float(meta["inputs"][0]["quantization"]["scale"]) > 0
    assert meta["gate"]["path"] == "kws/2.gate.json"
    assert len(meta["drift"]["inputs"]) == 10 and len(meta["drift"]["outputs"]) == 4
    assert main(["release", "list", "--repo", str(repo_dir)]) == 0
    assert "kws" in capsys.readouterr().out


def test_gate_vectors_are_the_models_own_outputs(repo_dir):
    from ai_edge_litert.interpreter import Interpreter

    repo = Repository(repo_dir)
    release = repo.releases()[0]
    gate_file = repo.targets_dir / "kws" / f"{release.meta.gate.sha256}.1.gate.json"
    gate = GateVectors.from_json(json.loads(gate_file.read_bytes()))
    interpreter = Interpreter(model_path=str(model_path("kws_int8_v1")))
    interpreter.allocate_tensors()
    for x, expected in zip(gate.inputs[0], gate.outputs[0], strict=True):
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        assert np.array_equal(got, expected)
    assert gate.inputs[0].dtype == np.int8 and len(gate.inputs[0]) == release.meta.gate.count


def test_user_supplied_reference_inputs(repo_dir, tmp_path):
    inputs = np.random.default_rng(5).normal(size=(6, 49, 10)).astype(np.float32)
    np.save(tmp_path / "ref.npy", inputs)
    assert (
        add(
            repo_dir,
            model_path("kws_int8_v2_head"),
            "2",
            "--reference-inputs",
            str(tmp_path / "ref.npy"),
            "--gate-samples",
            "6",
        )
        == 0
    )
    meta = Repository(repo_dir).releases()[-1].meta
    assert meta.gate.count == 6 and sum(meta.drift.top1) == 6


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing", ("nope.tflite", "no such model file")),
        ("text", ("notes.txt", "not a TFLite model")),
        ("truncated", ("truncated.tflite",)),
        ("old-version", ("--version 1", "not higher")),
        ("bad-expiry", ("bad duration",)),
        ("bad-reference", ("ref.npy", "shape")),
    ],
)
def test_bad_input_leaves_the_repository_as_it_was(repo_dir, tmp_path, capsys, case, needles):
    before = tree_digest(repo_dir)
    capsys.readouterr()
    good = model_path("kws_int8_v2_head")
    if case == "missing":
        code = add(repo_dir, tmp_path / "nope.tflite")
    elif case == "text":
        (tmp_path / "notes.txt").write_text("this is not a model\n")
        code = add(repo_dir, tmp_path / "notes.txt")
    elif case == "truncated":
        (tmp_path / "truncated.tflite").write_bytes(good.read_bytes()[:5000])
        code = add(repo_dir, tmp_path / "truncated.tflite")
    elif case == "old-version":
        code = add(repo_dir, good, "1")
    elif case == "bad-expiry":
        code = add(repo_dir, good, "2", "--expires", "soon")
    else:
        np.save(tmp_path / "ref.npy", np.zeros((4, 7), np.float32))
        code = add(repo_dir, good, "2", "--reference-inputs", str(tmp_path / "ref.npy"))
    refused(capsys, code, *needles)
    assert tree_digest(repo_dir) == before


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (("--atol", "-1"), ("--atol must be from 0 to inf, not -1",)),
        (("--atol", "nan"), ("--atol must be",)),
        (("--hardware-tag", "a b"), ("--hardware-tag 'a b'", "as devices report them")),
        (("--samples", "0"), ("--samples must be from 1 to 100000, not 0",)),
        (("--gate-samples", "9"), ("--gate-samples must be from 1 to 8, not 9",)),
        (("--latency-budget-ms", "0"), ("--latency-budget-ms must be",)),
        (("--arena-bytes", "-5"), ("--arena-bytes must be from 1",)),
    ],
)
def test_options_no_device_could_pass_are_refused(repo_dir, capsys, extra, needles):
    """A release signed with these would fail every device's gate or match none of them."""
    before = tree_digest(repo_dir)
    capsys.readouterr()
    refused(capsys, add(repo_dir, model_path("kws_int8_v2_head"), "2", *extra), *needles)
    assert tree_digest(repo_dir) == before


@pytest.mark.parametrize("version", ["99999999999999999999", "2147483648", "0", "-3"])
def test_versions_outside_32_bits_are_refused_and_the_next_release_still_signs(
    repo_dir, capsys, version
):
    before = tree_digest(repo_dir)
    capsys.readouterr()
    refused(capsys, add(repo_dir, model_path("kws_int8_v2_head"), version), "--version must be")
    assert tree_digest(repo_dir) == before
    assert add(repo_dir, model_path("kws_int8_v2_head"), "2147483647") == 0
    releases = Repository(repo_dir).releases()
    assert [r.version for r in releases] == [1, 2147483647]


def test_missing_key_file(repo_dir, tmp_path, capsys):
    before = tree_digest(repo_dir)
    capsys.readouterr()
    code = add(
        repo_dir,
        model_path("kws_int8_v2_head"),
        "2",
        "--offline-keys",
        str(tmp_path / "usb-stick-not-mounted"),
    )
    refused(capsys, code, "targets.key", "not found")
    assert tree_digest(repo_dir) == before


def test_a_key_of_another_repository_is_refused(repo_dir, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["keys", "init", "--repo", str(other)]) == 0
    before = tree_digest(repo_dir)
    capsys.readouterr()
    code = add(
        repo_dir,
        model_path("kws_int8_v2_head"),
        "2",
        "--offline-keys",
        str(other / "keys" / "offline"),
    )
    refused(capsys, code, "not a targets key")
    assert tree_digest(repo_dir) == before


def test_not_a_repository(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    code = add(tmp_path / "plain", model_path("kws_int8_v2_head"))
    refused(capsys, code, "plain", "not an edgefleet repository")
    assert not any((tmp_path / "plain").iterdir())


def test_init_refuses_an_existing_repository(repo_dir, capsys):
    before = tree_digest(repo_dir)
    capsys.readouterr()
    refused(capsys, main(["keys", "init", "--repo", str(repo_dir)]), "already holds")
    assert tree_digest(repo_dir) == before


def test_crash_before_the_timestamp_leaves_the_previous_release(repo_dir, monkeypatch):
    real_write = fsio.atomic_write_bytes

    def crash_on_timestamp(path, data, mode=0o644):
        if Path(path).name == "timestamp.json":
            raise OSError("power cut")
        real_write(path, data, mode)

    monkeypatch.setattr("gateway.releases.repository.atomic_write_bytes", crash_on_timestamp)
    with pytest.raises(OSError):
        add(repo_dir, model_path("kws_int8_v2_head"))
    monkeypatch.undo()
    assert [r.version for r in Repository(repo_dir).releases()] == [1]
    assert add(repo_dir, model_path("kws_int8_v2_head")) == 0
    assert [r.version for r in Repository(repo_dir).releases()] == [1, 2]


def test_exit_code_and_single_line_from_the_real_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "release", "list", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"edgefleet: error: {tmp_path}: not an edgefleet repository (no metadata/ folder)"
    ]


def test_help_explains_the_commands():
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "release", "add", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--reference-inputs" in result.stdout and "offline targets key" in result.stdout


def test_rollback_release_marks_an_older_version(repo_dir, capsys):
    assert add(repo_dir, model_path("kws_int8_v2_head")) == 0
    assert (
        main(["release", "rollback", "--repo", str(repo_dir), "--name", "kws", "--version", "1"])
        == 0
    )
    releases = {r.version: r.meta for r in Repository(repo_dir).releases()}
    assert releases[1].rollback and not releases[2].rollback
    capsys.readouterr()
    refused(
        capsys,
        main(["release", "rollback", "--repo", str(repo_dir), "--name", "kws", "--version", "7"]),
        "kws/7.tflite",
        "not a signed release",
    )


def test_old_versions_are_pruned_but_rollbacks_stay(repo_dir):
    """Each release lists only the newest --keep-versions of its name (and their gate vectors
    and evaluation sets), so the targets metadata stops growing; a version signed as a
    rollback stays listed, and the files stay on disk."""
    models = ["kws_int8_v2_head", "kws_int8_v2_full", "kws_int8_v3_drift", "kws_int8_v1"]
    for version, name in enumerate(models[:2], start=2):
        assert add(repo_dir, model_path(name), str(version), "--keep-versions", "2") == 0
    repo = Repository(repo_dir)
    assert [r.version for r in repo.releases()] == [2, 3]
    assert (
        main(["release", "rollback", "--repo", str(repo_dir), "--name", "kws", "--version", "2"])
        == 0
    )
    for version, name in enumerate(models[2:], start=4):
        assert add(repo_dir, model_path(name), str(version), "--keep-versions", "2") == 0
    repo = Repository(repo_dir)
    assert [r.version for r in repo.releases()] == [2, 4, 5]
    listed = set(repo.targets.signed.targets)
    assert {p.split("/")[1].split(".")[0] for p in listed} == {"2", "4", "5"}
    assert sorted(
        p.name.split(".", 1)[1] for p in (repo_dir / "targets" / "kws").glob("*.tflite")
    ) == [f"{v}.tflite" for v in range(1, 6)]


@pytest.mark.parametrize("keep", ["0", "-1"])
def test_keeping_no_version_is_refused(repo_dir, capsys, keep):
    before = tree_digest(repo_dir)
    refused(
        capsys,
        add(repo_dir, model_path("kws_int8_v2_head"), "2", "--keep-versions", keep),
        "--keep-versions",
    )
    assert tree_digest(repo_dir) == before


def test_keys_rotate_from_the_command_line(repo_dir, capsys):
    before = Repository(repo_dir).root.signed.version
    assert main(["keys", "rotate", "--repo", str(repo_dir), "--role", "targets"]) == 0
    assert "rotated targets key" in capsys.readouterr().out
    assert Repository(repo_dir).root.signed.version == before + 1
    assert add(repo_dir, model_path("kws_int8_v2_head")) == 0
