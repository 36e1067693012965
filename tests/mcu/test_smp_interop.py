"""The real ``smpmgr`` CLI (smpclient, a client edgefleet did not write) against ``edgefleet
mcu-sim --protocol smp`` on a pty: upload, state read, test, reset, confirm, a refused
signature, and an upload cut by a power cut, then resumed."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from protocol.serial.smp_image import image_hash
from tests.mcu.smp_support import SMPMGR, SmpSim, assert_trial_then_confirm, read_states, smpmgr

BAUD = 921600


@pytest.fixture
def sim(tmp_path, images):
    started = SmpSim(tmp_path / "sim", images, BAUD)
    yield started
    started.stop()


def ok(done) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Error" not in done.stdout, done.stdout
    return done.stdout


def test_smpmgr_uploads_tests_resets_and_confirms(sim, images):
    ok(smpmgr(sim.port, "image", "upload", str(images.path("v2"))))
    states = read_states(sim.port)
    assert states[0]["version"] == "1.0.0" and states[0]["active"] and states[0]["confirmed"]
    assert states[1]["version"] == "2.0.0" and states[1]["hash"] == image_hash(images.v2)
    ok(smpmgr(sim.port, "image", "state-write", image_hash(images.v2).hex()))
    assert read_states(sim.port)[1]["pending"]
    ok(smpmgr(sim.port, "os", "reset"))
    states = read_states(sim.port)
    assert states[0]["version"] == "2.0.0" and states[0]["active"]
    assert not states[0]["confirmed"] and states[1]["confirmed"]  # on trial
    ok(smpmgr(sim.port, "image", "state-write", "--confirm"))
    ok(smpmgr(sim.port, "os", "reset"))
    states = read_states(sim.port)
    assert states[0]["version"] == "2.0.0" and states[0]["confirmed"]
    assert "r='hello'" in ok(smpmgr(sim.port, "os", "echo", "hello"))


def test_smpmgr_test_without_confirm_is_reverted(sim, images):
    ok(smpmgr(sim.port, "image", "upload", str(images.path("v2"))))
    ok(smpmgr(sim.port, "image", "state-write", image_hash(images.v2).hex()))
    ok(smpmgr(sim.port, "os", "reset"))
    ok(smpmgr(sim.port, "os", "reset"))
    states = read_states(sim.port)
    assert states[0]["version"] == "1.0.0" and states[0]["confirmed"]


def test_an_image_with_an_untrusted_signature_is_refused(sim, images):
    ok(smpmgr(sim.port, "image", "upload", str(images.path("foreign"))))
    refused = smpmgr(sim.port, "image", "state-write", image_hash(images.foreign).hex())
    assert "INVALID_TLV" in refused.stdout, refused.stdout
    assert not read_states(sim.port)[1]["pending"]
    ok(smpmgr(sim.port, "os", "reset"))
    assert read_states(sim.port)[0]["version"] == "1.0.0"


def test_power_cut_mid_upload_then_smpmgr_resumes(sim, images):
    sim.fault_file.write_text("12")  # a few sectors into the upload
    cut = smpmgr(sim.port, "image", "upload", str(images.path("v2")), timeout=1.0)
    assert cut.returncode != 0
    deadline = time.monotonic() + 10
    while sim.fault_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sim.fault_file.exists(), sim.log()
    ok(smpmgr(sim.port, "image", "upload", str(images.path("v2"))))
    begins = [line for line in sim.log().splitlines() if "mcu.smp_upload_begin" in line]
    assert len(begins) == 2 and '"offset": 0' in begins[0]
    assert '"offset": 0' not in begins[1], begins  # resumed from the sectors in flash
    ok(smpmgr(sim.port, "image", "state-write", image_hash(images.v2).hex()))
    ok(smpmgr(sim.port, "os", "reset"))
    assert read_states(sim.port)[0]["version"] == "2.0.0"


def test_edgefleet_flash_over_smp_and_the_worker_rules(sim, images, tmp_path):
    """``edgefleet flash --protocol smp`` (smpclient underneath) against the simulator."""
    edgefleet = str(SMPMGR.with_name("edgefleet"))
    done = subprocess.run(
        [edgefleet, "flash", "--protocol", "smp", "--port", sim.port, "--json",
         str(images.path("v2"))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["version"] == "2.0.0+0" and not result["confirmed"]  # on trial
    assert_trial_then_confirm(sim.port, images)


def test_edgefleet_flash_names_an_untrusted_signature(sim, images):
    edgefleet = str(SMPMGR.with_name("edgefleet"))
    done = subprocess.run(
        [edgefleet, "flash", "--protocol", "smp", "--port", sim.port, "--confirm",
         str(images.path("foreign"))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "signature refused: the MCU does not trust the key that signed foreign.bin" in (
        done.stderr
    )
    assert read_states(sim.port)[0]["version"] == "1.0.0"
