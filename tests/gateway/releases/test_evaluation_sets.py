"""`edgefleet release add --eval-set --min-accuracy`: the bundled models on labelled banded
inputs (``edgefleet.models.bands``). Signing is refused below the minimum and allowed above;
the set is its own signed target; the entry it adds to the metadata is bounded and readable by
agents that predate it."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.cli import main
from edgefleet.models import bands, model_path
from gateway.releases.evaluation import Measured
from gateway.releases.repository import Repository
from protocol.model_meta import (
    MAX_EVAL_SAMPLES,
    EvalRef,
    EvalSet,
    MetadataError,
    ModelMeta,
)
from tests.gateway.releases.test_release_cli import refused, tree_digest

REPO = Path(__file__).resolve().parents[3]
BASE_COMMIT = "0d633b0"  # the last main without evaluation sets


def labelled(path: Path, shift: float, count: int = 300, seed: int = 5) -> Path:
    inputs, labels = bands.make(np.random.default_rng(seed), count, shift)
    np.savez(path, inputs=inputs, labels=labels)
    return path


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert main(["keys", "init", "--repo", str(path)]) == 0
    return path


@pytest.fixture
def sets(tmp_path: Path) -> dict[str, Path]:
    """In-distribution bands (every bundled model near 100 %) and bands dimmed by 1.5 (near
    60 %)."""
    return {
        "plain": labelled(tmp_path / "plain.npz", 0.0),
        "dimmed": labelled(tmp_path / "dimmed.npz", -1.5),
    }


def add(repo_dir: Path, model: str, version: int, *extra: str) -> int:
    return main(
        [
            "release",
            "add",
            "--repo",
            str(repo_dir),
            str(model_path(model)),
            "--name",
            "kws",
            "--version",
            str(version),
            "--samples",
            "8",
            *extra,
        ]
    )


def signed(repo_dir: Path, version: int) -> ModelMeta:
    return next(r for r in Repository(repo_dir).releases() if r.version == version).meta


def test_below_the_minimum_is_not_signed_and_the_line_says_why(repo_dir, sets):
    """A real process: exit 2, one line with the accuracy, its interval, n and the minimum;
    the repository is as it was."""
    before = tree_digest(repo_dir)
    command = [sys.executable, "-m", "edgefleet.cli", "release", "add", "--repo", str(repo_dir)]
    command += [str(model_path("kws_f32_v1")), "--name", "kws", "--version", "1"]
    command += ["--samples", "8", "--eval-set", str(sets["dimmed"]), "--min-accuracy", "0.9"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("edgefleet: error: kws/1: accuracy 0.593 (95 % interval"), line
    assert "95 % interval 0." in line and "n=300" in line and "minimum 0.9" in line
    assert "--sign-below-minimum" in line
    assert tree_digest(repo_dir) == before


@pytest.mark.parametrize("model", ["kws_f32_v1", "kws_int8_v2_full"])
def test_above_the_minimum_the_set_is_a_signed_target_of_its_own(repo_dir, sets, model):
    assert add(repo_dir, model, 1, "--eval-set", str(sets["plain"]), "--min-accuracy", "0.9") == 0
    repo = Repository(repo_dir)
    ref = signed(repo_dir, 1).evaluation
    assert ref is not None and ref.passed and ref.accuracy >= 0.9
    assert (ref.path, ref.count, ref.min_accuracy) == ("kws/1.eval.npz", 300, 0.9)
    target = repo.targets.signed.targets[ref.path]
    assert (target.length, target.hashes["sha256"]) == (ref.length, ref.sha256)
    assert target.custom == {"eval_for": "kws/1.tflite"}
    stored = repo.targets_dir / target.get_prefixed_paths()[0]
    data = stored.read_bytes()
    assert hashlib.sha256(data).hexdigest() == ref.sha256
    meta = signed(repo_dir, 1)
    evaluation = EvalSet.from_bytes(data, meta)
    assert evaluation.inputs.dtype == np.dtype(meta.inputs[0].dtype)
    assert evaluation.inputs.shape == (300, 1, 49, 10)
    if meta.inputs[0].quantized:  # stored as the model takes it: a quarter of float32
        assert len(data) < 300 * 490 * 2


def test_a_folder_holding_eval_npz_and_inputs_already_quantized(repo_dir, sets, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    labelled(folder / "eval.npz", 0.0)
    assert add(repo_dir, "kws_int8_v1", 1, "--eval-set", str(folder), "--min-accuracy", "0.9") == 0
    spec = signed(repo_dir, 1).inputs[0]
    with np.load(folder / "eval.npz") as given:
        raw = spec.quantize(given["inputs"])
        np.savez(tmp_path / "raw.npz", inputs=raw, labels=given["labels"])
    extra = ("--eval-set", str(tmp_path / "raw.npz"), "--min-accuracy", "0.9")
    assert add(repo_dir, "kws_int8_v1", 2, *extra) == 0
    assert signed(repo_dir, 2).evaluation.accuracy == signed(repo_dir, 1).evaluation.accuracy


def test_signed_below_the_minimum_on_request_and_shown(repo_dir, sets, capsys):
    extra = ("--eval-set", str(sets["dimmed"]), "--min-accuracy", "0.9", "--sign-below-minimum")
    assert add(repo_dir, "kws_f32_v2_head", 1, *extra) == 0
    ref = signed(repo_dir, 1).evaluation
    assert not ref.passed and ref.accuracy < 0.9
    assert "BELOW MINIMUM" in capsys.readouterr().out
    assert main(["release", "list", "--repo", str(repo_dir)]) == 0
    listing = capsys.readouterr().out
    assert f"accuracy {ref.accuracy:.3f} (n=300, min 0.9) BELOW MINIMUM" in listing
    show = ["release", "show", "--repo", str(repo_dir), "--name", "kws", "--version", "1"]
    assert main(show) == 0
    assert "evaluation: kws/1.eval.npz, accuracy" in capsys.readouterr().out
    assert main([*show, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["meta"]["evaluation"]["passed"] is False


def bad_sets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files an operator might give by mistake, and the words of the refusal."""
    x, y = bands.make(np.random.default_rng(1), 20)
    cases = {
        "no labels": ({"inputs": x}, "needs arrays 'inputs' and 'labels'"),
        "fewer inputs": ({"inputs": x[:10], "labels": y}, "expected [20, *[1, 49, 10]]"),
        "wrong shape": ({"inputs": x[:, :40], "labels": y}, "inputs have shape [20, 40, 10]"),
        "label 4": ({"inputs": x, "labels": y + 4}, "class indices from 0 to 3"),
        "float labels": ({"inputs": x, "labels": y.astype(float)}, "class indices"),
        "int inputs": ({"inputs": x.astype(np.int64), "labels": y}, "inputs are int64"),
        "not finite": ({"inputs": x * np.inf, "labels": y}, "not finite"),
    }
    made = {}
    for name, (arrays, words) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(path, **arrays)
        made[name] = (path, words)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    made["not npz"] = (tmp_path / "junk.npz", "not an evaluation set (.npz)")
    made["missing"] = (tmp_path / "absent.npz", "no such evaluation set")
    return made


def test_a_bad_set_is_one_line_and_leaves_the_repository(repo_dir, tmp_path, capsys):
    before = tree_digest(repo_dir)
    for name, (path, words) in bad_sets(tmp_path).items():
        capsys.readouterr()
        code = add(repo_dir, "kws_f32_v1", 1, "--eval-set", str(path), "--min-accuracy", "0.5")
        refused(capsys, code, words)
        assert tree_digest(repo_dir) == before, name


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--min-accuracy", "0.9"), "--eval-set and --min-accuracy go together"),
        (("--eval-set", "x.npz"), "--eval-set and --min-accuracy go together"),
        (("--eval-set", "x.npz", "--min-accuracy", "1.5"), "--min-accuracy must be from 0 to 1"),
        (("--sign-below-minimum",), "--sign-below-minimum needs --eval-set"),
    ],
)
def test_options_that_go_together(repo_dir, capsys, extra, words):
    refused(capsys, add(repo_dir, "kws_f32_v1", 1, *extra), words)


def test_the_wilson_interval():
    """Its ends where they are exact (0 and n successes: z^2 / (n + z^2)), within [0, 1], and
    around the observed accuracy."""
    z2 = 1.959963984540054**2
    assert Measured(0, 10).interval() == pytest.approx((0.0, z2 / (10 + z2)))
    assert Measured(10, 10).interval() == pytest.approx((10 / (10 + z2), 1.0))
    low, high = Measured(81, 100).interval()
    assert low < 0.81 < high and (low, high) == pytest.approx((0.7222, 0.8749), abs=1e-4)


# -- the signed entry and the set, as a device reads them ------------------------------------


class Signed(tuple):
    """(metadata, set bytes), shown briefly in a falsifying example."""

    def __repr__(self) -> str:
        return "Signed(kws/1 with kws/1.eval.npz)"


@pytest.fixture(scope="module")
def with_evaluation(tmp_path_factory) -> Signed:
    """Signed metadata with an evaluation entry (int8 model) and the set's bytes."""
    base = tmp_path_factory.mktemp("evaluation")
    repo = base / "repo"
    assert main(["keys", "init", "--repo", str(repo)]) == 0
    extra = ("--eval-set", str(labelled(base / "plain.npz", 0.0, 64)), "--min-accuracy", "0.9")
    assert add(repo, "kws_int8_v1", 1, *extra) == 0
    opened = Repository(repo)
    target = opened.targets.signed.targets["kws/1.tflite"]
    evaluation = opened.targets.signed.targets["kws/1.eval.npz"]
    data = (opened.targets_dir / evaluation.get_prefixed_paths()[0]).read_bytes()
    return Signed((target.custom, data))


def test_agents_that_predate_evaluation_sets_read_the_metadata(with_evaluation, monkeypatch):
    """The protocol module of the last release without evaluation sets parses the new
    metadata (it reads only the keys it knows) to the same model description."""
    custom, _ = with_evaluation
    source = subprocess.run(
        ["git", "show", f"{BASE_COMMIT}:protocol/model_meta.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "evaluation" not in source
    old = types.ModuleType("old_model_meta")
    monkeypatch.setitem(sys.modules, old.__name__, old)  # its dataclasses look themselves up
    exec(compile(source, "old_model_meta.py", "exec"), old.__dict__)
    then, now = old.ModelMeta.from_json(custom), ModelMeta.from_json(custom)
    assert (then.name, then.version, then.gate.sha256) == (now.name, now.version, now.gate.sha256)
    assert then.inputs[0].shape == now.inputs[0].shape


def test_releases_without_evaluation_are_read_unchanged(with_evaluation):
    custom, _ = with_evaluation
    old = {k: v for k, v in custom.items() if k != "evaluation"}
    meta = ModelMeta.from_json(old)
    assert meta.evaluation is None and meta.to_json() == old


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"count": 0}, "evaluation count must be from 1"),
        ({"count": MAX_EVAL_SAMPLES + 1}, "evaluation count must be from 1"),
        ({"length": 0}, "evaluation length 0 out of range"),
        ({"length": 2**40}, "out of range"),
        ({"accuracy": "1.5"}, "accuracy not in [0, 1]"),
        ({"min_accuracy": "nan"}, "min_accuracy not in [0, 1]"),
        ({"passed": False}, "passed does not agree"),
        ({"sha256": "00"}, "bad evaluation sha256"),
        ({"path": "kws/1.tflite"}, "is not 'kws/1.eval.npz'"),
        ({"count": "many"}, "bad evaluation"),
    ],
)
def test_the_entry_is_bounded(with_evaluation, change, words):
    custom, _ = with_evaluation
    edited = json.loads(json.dumps(custom))
    edited["evaluation"] |= change
    with pytest.raises(MetadataError, match=re.escape(words)):
        ModelMeta.from_json(edited)


def test_a_set_too_big_for_the_model_is_refused(with_evaluation):
    """10,000 samples of a 96x96x3 input would be 276 M values: refused from the metadata."""
    custom, _ = with_evaluation
    edited = json.loads(json.dumps(custom))
    edited["inputs"][0]["shape"] = [1, 96, 96, 3]
    edited["evaluation"]["count"] = MAX_EVAL_SAMPLES
    with pytest.raises(MetadataError, match="input values exceeds"):
        ModelMeta.from_json(edited)


def archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as made:
        for name, data in members.items():
            made.writestr(name, data)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_member_declaring_more_than_the_signed_count_is_not_inflated(with_evaluation):
    """A compressed member of 64 MiB of zeros (64 KiB on the wire) is refused from its
    declared size, before it is inflated."""
    custom, _ = with_evaluation
    meta = ModelMeta.from_json(custom)
    bomb = archive({"inputs.npy": bytes(64 << 20), "labels.npy": npy(np.zeros(64, np.int64))})
    assert len(bomb) < 1 << 20
    with pytest.raises(MetadataError, match=re.escape("inputs.npy declares 67108864 bytes")):
        EvalSet.from_bytes(bomb, meta)


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"inputs.npy": b"", "labels.npy": b"", "x.npy": b""}, "not inputs.npy and labels.npy"),
        ({"inputs.npy": npy(np.zeros((64, 1, 49, 10), np.float32))}, "not inputs.npy and"),
        (
            {
                "inputs.npy": npy(np.zeros((64, 1, 49, 10), np.float32)),
                "labels.npy": npy(np.zeros(64, np.int64)),
            },
            "inputs.npy declares 125568 bytes, at most 35456",  # 4 bytes a value, not 1
        ),
        (
            {
                "inputs.npy": npy(np.zeros((64, 1, 49, 10), np.uint8)),
                "labels.npy": npy(np.zeros(64, np.int64)),
            },
            "inputs are uint8, the model takes int8",
        ),
        (
            {
                "inputs.npy": npy(np.zeros((63, 1, 49, 10), np.int8)),
                "labels.npy": npy(np.zeros(64, np.int64)),
            },
            "has shape (63, 1, 49, 10), signed (64, 1, 49, 10)",
        ),
        (
            {
                "inputs.npy": npy(np.zeros((64, 1, 49, 10), np.int8)),
                "labels.npy": npy(np.full(64, 7, np.int64)),
            },
            "labels outside the model's 4 classes",
        ),
        (
            {
                "inputs.npy": npy(np.zeros((64, 1, 49, 10), np.int8)),
                "labels.npy": npy(np.array(["a"] * 64, dtype=object)),
            },
            "evaluation set unreadable",
        ),
    ],
)
def test_a_set_that_does_not_fit_its_entry_is_refused(with_evaluation, members, words):
    custom, _ = with_evaluation
    with pytest.raises(MetadataError, match=re.escape(words)):
        EvalSet.from_bytes(archive(members), ModelMeta.from_json(custom))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_bytes_are_a_set_or_a_metadata_error(with_evaluation, data):
    """Whatever the bytes (random, or the real set with bytes flipped or cut), reading them
    gives the set or ``MetadataError``, nothing else."""
    custom, genuine = with_evaluation
    meta = ModelMeta.from_json(custom)
    kind = data.draw(st.sampled_from(["random", "flipped", "cut"]))
    if kind == "random":
        blob = data.draw(st.binary(max_size=4096))
    elif kind == "cut":
        blob = genuine[: data.draw(st.integers(0, len(genuine)))]
    else:
        flipped = bytearray(genuine)
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(flipped) - 1))
            flipped[at] ^= data.draw(st.integers(1, 255))
        blob = bytes(flipped)
    try:
        read = EvalSet.from_bytes(blob, meta)
    except MetadataError:
        return
    assert read.inputs.shape == (64, 1, 49, 10) and read.labels.shape == (64,)


@settings(max_examples=200, deadline=None)
@given(
    entry=st.dictionaries(
        st.sampled_from(
            ["path", "sha256", "length", "count", "min_accuracy", "accuracy", "passed"]
        ),
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=70), st.floats()),
    )
)
def test_any_entry_is_an_evaluation_or_a_metadata_error(entry):
    try:
        ref = EvalRef.from_json(entry)
    except MetadataError:
        return
    assert 1 <= ref.count <= MAX_EVAL_SAMPLES and 0 <= ref.accuracy <= 1
