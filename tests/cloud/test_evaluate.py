"""``cloud evaluate`` with the real bundled models on banded inputs whose class is known: the
candidate runs on the inputs the devices stored (float32 for a float model, int8 for an int8
one), and every number matches a direct computation with the same models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cloud.evaluate import EvaluateError, Request, evaluate
from cloud.labels import import_labels
from edgefleet.cli import main
from edgefleet.engine import Engine
from edgefleet.models import bands, model_path
from protocol import dataset
from tests.cloud.records import body, common, tensor

N = 160
SHIFT = -1.3  # dimmer bands than either version learnt: both make mistakes, not the same ones


def capture(name: str, version: int, inputs: np.ndarray, first_seq: int = 0) -> list[dict]:
    """Sample records as the agent writes them: the tensor the model took, its whole output."""
    engine = Engine(model_path(name))
    scores = engine.infer(inputs).scores
    records = []
    for i, (x, out) in enumerate(zip(inputs, scores, strict=True)):
        packed = tensor(engine.input.quantize(x).reshape(engine.input.shape))
        top = np.argsort(-out)
        records.append(
            common("sample", first_seq + i, model="kws", version=version) | {
                "campaign": "dim", "trigger": "random < 1", "class": int(top[0]),
                "confidence": float(out[top[0]]), "margin": float(out[top[0]] - out[top[1]]),
                "drift": False, "scores": out.tolist(), "input": packed,
            }
        )  # fmt: skip
    return records


def labelled(root, tmp_path, records: list[dict], inputs: np.ndarray) -> np.ndarray:
    """Store the records and label each with the class its input was made from."""
    dataset.write_batch(root, f"{len(records):040x}", dataset.parse_body(body(*records)))
    truth = bands.truth(inputs)
    lines = [f"cam-1:{r['boot']}:{r['seq']},{t}" for r, t in zip(records, truth, strict=True)]
    path = tmp_path / f"labels-{records[0]['seq']}.csv"
    path.write_text("id,label\n" + "\n".join(lines) + "\n")
    import_labels(root, path)
    return truth


def direct(candidate: np.ndarray, incumbent: np.ndarray, truth: np.ndarray) -> dict:
    """The comparison computed straight from the per-sample differences."""
    d = (candidate == truth).astype(float) - (incumbent == truth)
    half = 1.959963984540054 * d.std() / np.sqrt(len(d))
    return {
        "difference": d.mean(),
        "interval": [d.mean() - half, d.mean() + half],
        "candidate": (candidate == truth).mean(),
        "incumbent": (incumbent == truth).mean(),
    }


@pytest.fixture
def float_fleet(tmp_path):
    """Samples captured under kws_f32_v1 (version 1) on dim bands, labelled with the truth."""
    inputs, _ = bands.make(np.random.default_rng(3), N, shift=SHIFT)
    root = tmp_path / "dataset"
    truth = labelled(root, tmp_path, capture("kws_f32_v1", 1, inputs), inputs)
    return root, inputs, truth


def top1(name: str, inputs: np.ndarray) -> np.ndarray:
    return Engine(model_path(name)).infer(inputs).scores.argmax(axis=1)


def test_the_candidate_against_the_version_matches_a_direct_computation(float_fleet):
    root, inputs, truth = float_fleet
    result = evaluate(root, Request(model_path("kws_f32_v2_full")))
    want = direct(top1("kws_f32_v2_full", inputs), top1("kws_f32_v1", inputs), truth)
    assert result["model"] == "kws" and result["n"] == N
    assert result["incumbent"]["version"] == 1
    assert result["candidate"]["accuracy"] == pytest.approx(want["candidate"])
    assert result["incumbent"]["accuracy"] == pytest.approx(want["incumbent"])
    assert result["difference"]["accuracy"] == pytest.approx(want["difference"])
    assert result["difference"]["interval"] == pytest.approx(want["interval"])
    assert result["difference"]["candidate_only"] + result["difference"]["incumbent_only"] > 0
    v1 = top1("kws_f32_v1", inputs)
    v2 = top1("kws_f32_v2_full", inputs)
    for row in result["classes"]:
        rows = truth == row["class"]
        change = (v2[rows] == row["class"]).mean() - (v1[rows] == row["class"]).mean()
        assert row["change"] == pytest.approx(change) and row["support"] == rows.sum()


def test_against_a_file_runs_it_on_the_same_inputs(float_fleet):
    root, _, _ = float_fleet
    by_version = evaluate(root, Request(model_path("kws_f32_v2_full"), against="1"))
    by_file = evaluate(
        root, Request(model_path("kws_f32_v2_full"), against=str(model_path("kws_f32_v1")))
    )
    assert by_file["incumbent"]["file"].endswith("kws_f32_v1.tflite")
    assert by_file["incumbent"]["accuracy"] == by_version["incumbent"]["accuracy"]
    assert by_file["difference"] == by_version["difference"]
    same = evaluate(root, Request(model_path("kws_f32_v1")))
    assert same["difference"]["accuracy"] == 0 and same["difference"]["interval"] == [0, 0]


def test_the_default_incumbent_is_the_newest_version_with_labelled_samples(float_fleet, tmp_path):
    root, _, _ = float_fleet
    inputs, _ = bands.make(np.random.default_rng(4), 40, shift=SHIFT)
    labelled(root, tmp_path, capture("kws_f32_v2_head", 2, inputs, first_seq=1000), inputs)
    result = evaluate(root, Request(model_path("kws_f32_v2_full")))
    assert result["incumbent"]["version"] == 2 and result["n"] == 40
    with pytest.raises(EvaluateError, match=r"version 7 \(labelled samples exist for .*\[1, 2\]"):
        evaluate(root, Request(model_path("kws_f32_v2_full"), against="7"))


def test_int8_samples_go_to_an_int8_candidate_as_they_are(tmp_path):
    inputs, _ = bands.make(np.random.default_rng(5), N, shift=SHIFT)
    root = tmp_path / "dataset"
    truth = labelled(root, tmp_path, capture("kws_int8_v1", 1, inputs), inputs)
    result = evaluate(root, Request(model_path("kws_int8_v2_full")))
    want = direct(top1("kws_int8_v2_full", inputs), top1("kws_int8_v1", inputs), truth)
    assert result["candidate"]["accuracy"] == pytest.approx(want["candidate"])
    assert result["difference"]["accuracy"] == pytest.approx(want["difference"])
    with pytest.raises(EvaluateError, match="takes float32; 160 samples hold int8 tensors"):
        evaluate(root, Request(model_path("kws_f32_v2_full")))


def test_a_shape_mismatch_is_refused_in_one_line(float_fleet):
    root, _, _ = float_fleet
    with pytest.raises(EvaluateError) as caught:
        evaluate(root, Request(model_path("vision_f32_v1")))
    assert str(caught.value) == "vision_f32_v1.tflite takes input [1, 128, 128, 1]; 160 samples " \
        "hold [1, 49, 10]"  # fmt: skip


def test_cli_json_gate_and_errors(float_fleet, tmp_path, capsys):
    root, _, _ = float_fleet
    argv = ["cloud", "evaluate", str(model_path("kws_f32_v2_full")), "--dataset", str(root)]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    accuracy = result["candidate"]["accuracy"]
    assert result["passed"] and result["min_accuracy"] is None
    assert 0 < accuracy < 1 and result["difference"]["mcnemar_p"] <= 1
    assert main([*argv, "--min-accuracy", str(accuracy)]) == 0
    assert "difference (candidate - incumbent)" in capsys.readouterr().out
    assert main([*argv, "--min-accuracy", str(accuracy + 0.01)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"candidate accuracy {accuracy:.4f} is below --min-accuracy {accuracy + 0.01}"]
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model")
    for bad, message in [
        ([str(junk)], "not a TFLite model"),
        ([str(tmp_path / "none.tflite")], "no such file"),
        ([argv[2], "--against", "latest"], "a version number or a .tflite file"),
        ([argv[2], "--model", "other"], "no labelled samples of model other"),
    ]:
        assert main(["cloud", "evaluate", *bad, "--dataset", str(root)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
