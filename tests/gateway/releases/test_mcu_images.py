"""`edgefleet release add-image`: an imgtool-signed MCUboot image becomes a TUF target that says
it is for an MCU, the gateway's import carries it, and every refusal is one line, exit code 2
and the repository as it was."""

from __future__ import annotations

import json

import pytest

from edgefleet.cli import main
from edgefleet.models import model_path
from firmware_sim.images import keygen, sign
from firmware_sim.layout import Layout
from gateway.releases.errors import ReleaseError
from gateway.releases.repository import Repository
from gateway.serving.release_import import gateway_keys, import_release
from tests.gateway.release_support import sign as sign_model
from tests.gateway.releases.test_release_cli import refused, tree_digest


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    root = tmp_path_factory.mktemp("image")
    signed = root / "sensor.bin"
    sign(keygen(root / "key.pem"), model_path("kws_int8_v1"), signed, "2.2.3", Layout().slot_size)
    return signed


def add_image(repo, path, name="sensor", version="2", *extra) -> int:
    args = ["release", "add-image", str(path), "--name", name, "--version", version]
    return main([*args, "--repo", str(repo.dir), *extra])


def test_add_image_signs_it_for_an_mcu_and_import_carries_it(repo, image, tmp_path, capsys):
    capsys.readouterr()
    assert add_image(repo, image, "sensor", "2", "--json") == 0
    signed = json.loads(capsys.readouterr().out)
    assert signed["target"] == "sensor/2.bin" and signed["length"] == image.stat().st_size
    assert signed["meta"] == {
        "kind": "mcu-image",
        "name": "sensor",
        "version": 2,
        "image_version": "2.2.3+0",
        "size": image.stat().st_size,
    }
    assert main(["release", "list", "--repo", str(repo.dir), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["kind"], r["name"], r["version"]) for r in listed] == [
        ("model", "kws", 1),
        ("mcu-image", "sensor", 2),
    ]
    result = import_release(repo.dir, tmp_path / "served", repo.keys.online)
    served = Repository(tmp_path / "served", gateway_keys(tmp_path / "served", repo.keys.online))
    # kws 1 (the model and its gate vectors in two encodings) and the image
    assert result.new_targets == 4 and [i.path for i in served.images()] == ["sensor/2.bin"]


def test_refusals_are_one_line_and_leave_the_repository(repo, image, tmp_path, capsys):
    trailing = tmp_path / "padded.bin"
    trailing.write_bytes(image.read_bytes() + b"\xff" * 8)
    broken = tmp_path / "broken.bin"
    data = bytearray(image.read_bytes())
    data[0x300] ^= 1
    broken.write_bytes(bytes(data))
    assert add_image(repo, image, "sensor", "2") == 0
    before = tree_digest(repo.dir)
    capsys.readouterr()
    for path, name, version, needles in (
        (model_path("kws_int8_v1"), "sensor", "3", ("is not an MCUboot image", "no MCUboot")),
        (trailing, "sensor", "3", ("is not an MCUboot image", "8 bytes after")),
        (broken, "sensor", "3", ("is not an MCUboot image", "SHA-256")),
        (tmp_path / "missing.bin", "sensor", "3", ("cannot read image",)),
        (image, "sensor", "2", ("not higher than the latest (2)",)),
        (image, "kws", "5", ("'kws' is a model", "an MCU image needs a name of its own")),
        (image, "sensor", "3", ("header says version 2.2.3", "not --version 3", "--force")),
        (image, "sensor", str(2**31), ("--version must be from 1 to 2147483647",)),
    ):
        refused(capsys, add_image(repo, path, name, version), *needles)
    assert tree_digest(repo.dir) == before
    repo.reload()  # the command changed the folder behind this object
    with pytest.raises(ReleaseError, match="'sensor' is an MCU image; a model needs a name"):
        sign_model(repo, "kws_f32_v1", "sensor", 9)
    assert tree_digest(repo.dir) == before


def test_force_signs_an_image_whose_header_says_another_version(repo, image, capsys):
    assert add_image(repo, image, "sensor", "7", "--force", "--json") == 0
    signed = json.loads(capsys.readouterr().out)
    assert (signed["version"], signed["meta"]["image_version"]) == (7, "2.2.3+0")
