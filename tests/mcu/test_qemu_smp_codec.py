"""The QEMU SMP firmware's parsers of what the host sends, built natively with the host gcc.

``firmware_sim/qemu/cbor.c`` and ``smp_frame.c`` (the console framing: lines, base64, CRC16)
become a shared object called through ctypes, and hypothesis drives them: they agree with
``cbor2`` and the ``smp`` package on valid input, with the Python simulator's console decoder
(``protocol/serial/smp_console.py``) on any byte stream, and never read outside what they are
given. Inputs are copied into buffers of their exact size from ``malloc``, so a run under
AddressSanitizer (``test_parsers_under_sanitizers``: the same tests in a child Python with the
sanitized build and libasan preloaded) sees any read past an input's end.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smp import packet as smppacket

from firmware_sim.qemu_harness import FIRMWARE_DIR
from protocol.serial import smp_console

SOURCES = ("cbor.c", "smp_frame.c")
LIBRARY_ENV = "EDGEFLEET_FW_CODEC_LIB"  # the child run's sanitized build
CBOR_UINT, CBOR_BYTES, CBOR_TEXT, CBOR_BOOL, CBOR_OTHER = 1, 2, 3, 4, 5
MAX_DEPTH = 4  # cbor.c: containers nested deeper than this are refused
PACKET_MAX = 384
SEND_MAX = PACKET_MAX + 128
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Item(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int),
        ("value", ctypes.c_uint32),
        ("data", ctypes.c_void_p),
        ("len", ctypes.c_uint32),
    ]


class Out(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("cap", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("overflow", ctypes.c_int),
    ]


WRITER = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t)
LIBC = ctypes.CDLL(None)
LIBC.malloc.restype = ctypes.c_void_p
LIBC.malloc.argtypes = [ctypes.c_size_t]
LIBC.free.argtypes = [ctypes.c_void_p]


class Exact:
    """``data`` in a malloc'd buffer of exactly its length (a sanitizer sees a byte past it)."""

    def __init__(self, data: bytes) -> None:
        self.size = len(data)
        self.address = LIBC.malloc(max(self.size, 1))
        ctypes.memmove(self.address, data, self.size)

    def __enter__(self) -> Exact:
        return self

    def __exit__(self, *exc) -> None:
        LIBC.free(self.address)


class Native:
    """The firmware's CBOR reader and writer and its console framing as Python callables."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        lib.cbor_map_get.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_char_p, ctypes.POINTER(Item),
        ]  # fmt: skip
        lib.smp_crc16.restype = ctypes.c_uint16
        lib.smp_crc16.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.smp_frame_byte.restype = ctypes.c_uint32
        lib.smp_frame_byte.argtypes = [ctypes.c_uint8]
        lib.smp_frame_packet.restype = ctypes.c_void_p
        lib.smp_frame_send.argtypes = [ctypes.c_void_p, ctypes.c_uint32, WRITER]
        for name in ("cbor_map", "cbor_array", "cbor_uint", "cbor_bool"):
            getattr(lib, name).argtypes = [ctypes.POINTER(Out), ctypes.c_uint32]
        for name in ("cbor_text_n", "cbor_bytes"):
            getattr(lib, name).argtypes = [ctypes.POINTER(Out), ctypes.c_void_p, ctypes.c_uint32]
        self.lib = lib

    def map_get(self, data: bytes, key: bytes) -> tuple[int, object]:
        """cbor_map_get's verdict and the value found, as (kind, payload)."""
        item = Item()
        with Exact(data) as buf:
            rc = self.lib.cbor_map_get(buf.address, buf.size, key, ctypes.byref(item))
            if rc != 1:
                return rc, None
            if item.kind in (CBOR_BYTES, CBOR_TEXT):
                start = item.data - buf.address
                assert start >= 0 and start + item.len <= buf.size, "value outside the input"
                return rc, (item.kind, ctypes.string_at(item.data, item.len))
            return rc, (item.kind, item.value)

    def write(self, value, cap: int = 4096) -> tuple[bytes, bool]:
        """``value`` through the CBOR writer into a buffer of ``cap`` bytes: (bytes, overflow)."""
        with Exact(b"\0" * cap) as buf:
            out = Out(buf.address, cap, 0, 0)
            self._put(ctypes.byref(out), value)
            assert out.len <= cap
            return ctypes.string_at(buf.address, out.len), bool(out.overflow)

    def _put(self, out, value) -> None:
        if isinstance(value, bool):
            self.lib.cbor_bool(out, int(value))
        elif isinstance(value, int):
            self.lib.cbor_uint(out, value)
        elif isinstance(value, str | bytes):
            data = value.encode() if isinstance(value, str) else value
            with Exact(data) as buf:
                put = self.lib.cbor_text_n if isinstance(value, str) else self.lib.cbor_bytes
                put(out, buf.address, buf.size)
        elif isinstance(value, list):
            self.lib.cbor_array(out, len(value))
            for item in value:
                self._put(out, item)
        else:
            self.lib.cbor_map(out, len(value))
            for key, item in value.items():
                self._put(out, key)
                self._put(out, item)

    def feed(self, stream: bytes) -> list[bytes]:
        """The packets the firmware's framing takes from ``stream``, from a fresh start."""
        self.lib.smp_frame_reset()
        packets = []
        for byte in stream:
            n = self.lib.smp_frame_byte(byte)
            assert n <= PACKET_MAX - 4
            if n:
                packets.append(ctypes.string_at(self.lib.smp_frame_packet(), n))
        return packets

    def send(self, packet: bytes) -> bytes:
        lines: list[bytes] = []
        writer = WRITER(lambda data, n: lines.append(ctypes.string_at(data, n)))
        with Exact(packet) as buf:
            self.lib.smp_frame_send(buf.address, buf.size, writer)
        assert all(len(line) <= 127 for line in lines), lines
        return b"".join(lines)

    def crc16(self, data: bytes) -> int:
        with Exact(data) as buf:
            return self.lib.smp_crc16(buf.address, buf.size)


def build(out: Path, sanitize: bool) -> Path:
    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    if sanitize:
        flags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
        flags += ["-fno-sanitize-recover=all"]
    else:
        flags += ["-O2"]
    sources = [str(FIRMWARE_DIR / name) for name in SOURCES]
    subprocess.run(["gcc", *flags, "-o", str(out), *sources], check=True)
    return out


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Native:
    if os.environ.get(LIBRARY_ENV):
        return Native(Path(os.environ[LIBRARY_ENV]))
    if shutil.which("gcc") is None:
        pytest.skip("no host gcc to build the firmware's parsers natively")
    return Native(build(tmp_path_factory.mktemp("codec") / "libfwcodec.so", sanitize=False))


# -- CBOR ------------------------------------------------------------------------------

scalars = (
    st.integers(0, 2**64 - 1)
    | st.integers(-(2**64), -1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
    | st.booleans()
    | st.none()
    | st.floats()
    | st.integers(0, 255).filter(lambda n: not 20 <= n < 32).map(cbor2.CBORSimpleValue)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
keys = st.text(st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]), max_size=8)
maps = st.dictionaries(keys, values, max_size=6)


def depth(value) -> int:
    """How deep containers nest in ``value`` (a scalar: 0)."""
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max((max(depth(k), depth(v)) for k, v in value.items()), default=0)
    return 0


def expected(value) -> tuple[int, object]:
    if isinstance(value, bool):
        return CBOR_BOOL, int(value)
    if isinstance(value, int) and 0 <= value < 2**32:
        return CBOR_UINT, value
    if isinstance(value, bytes):
        return CBOR_BYTES, value
    if isinstance(value, str):
        return CBOR_TEXT, value.encode()
    return CBOR_OTHER, None


@FUZZ
@given(body=maps, absent=keys, canonical=st.booleans())
def test_cbor_reader_agrees_with_cbor2(native, body, absent, canonical):
    """Every key of a map cbor2 wrote is found with its value; floats, negative or 64-bit
    integers, simple values and containers are values of another kind; nesting past the limit
    is refused."""
    data = cbor2.dumps(body, canonical=canonical)
    if max(map(depth, body.values()), default=0) >= MAX_DEPTH:
        assert native.map_get(data, b"")[0] == -1
        return
    for key, value in body.items():
        rc, found = native.map_get(data, key.encode())
        assert rc == 1, (key, data.hex())
        kind, payload = expected(value)
        assert found[0] == kind, (key, value, data.hex())
        if kind != CBOR_OTHER:
            assert found[1] == payload
    if absent not in body:
        assert native.map_get(data, absent.encode()) == (0, None)


@FUZZ
@given(value=values)
def test_cbor_reader_refuses_what_is_not_one_whole_map(native, value):
    data = cbor2.dumps(value)
    if not isinstance(value, dict):
        assert native.map_get(data, b"k")[0] == -1
    else:
        assert native.map_get(data + b"\x00", b"k")[0] == -1  # trailing bytes
        if len(data) > 1:
            assert native.map_get(data[:-1], b"k")[0] == -1  # cut short


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, at, byte in edits:
        at = at % (len(out) + 1)
        if kind == 0 and at < len(out):
            out[at] = byte
        elif kind == 1:
            out.insert(at, byte)
        elif kind == 2 and at < len(out):
            del out[at]
    return bytes(out)


edits = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1000), st.integers(0, 255)), max_size=6
)


@FUZZ
@given(body=maps, changes=edits, key=keys | st.sampled_from(["off", "data", "len", "sha"]))
def test_cbor_reader_survives_mutated_maps(native, body, changes, key):
    rc, found = native.map_get(mutate(cbor2.dumps(body), changes), key.encode())
    assert rc in (-1, 0, 1) and (rc == 1) == (found is not None)


@FUZZ
@given(data=st.binary(max_size=200), key=keys)
def test_cbor_reader_survives_random_bytes(native, data, key):
    rc, _ = native.map_get(data, key.encode())
    assert rc in (-1, 0, 1)


writable = st.recursive(
    st.integers(0, 2**32 - 1) | st.binary(max_size=300) | st.text(max_size=30) | st.booleans(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)


@FUZZ
@given(value=writable, cap=st.integers(0, 600))
def test_cbor_writer_matches_cbor2_and_stops_when_full(native, value, cap):
    """The writer's bytes are cbor2's (shortest heads); a full buffer keeps a prefix of them,
    whole items only, and says it overflowed."""
    want = cbor2.dumps(value)
    assert native.write(value) == (want, False)
    written, overflow = native.write(value, cap)
    assert overflow == (len(want) > cap)
    assert want.startswith(written)


def test_values_the_firmware_does_not_use_are_skipped(native):
    """A value the firmware does not use must not make the request malformed, whatever its
    bits: floats of any width, one-byte simple values, 64-bit integers are well formed."""
    for extra in (1.5, math.pi, 0.0, 1e300, cbor2.CBORSimpleValue(99), 2**40, -(2**63)):
        data = cbor2.dumps({"x": extra, "off": 7}, canonical=True)
        assert native.map_get(data, b"off") == (1, (CBOR_UINT, 7)), data.hex()
    # a one-byte simple value below 32 is not well formed (RFC 8949 section 3.3)
    assert native.map_get(bytes.fromhex("a26178f81463") + b"off\x07", b"off")[0] == -1


# -- console framing ---------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=600))
def test_crc16_matches_the_smp_package(native, data):
    assert native.crc16(data) == smppacket.crc16_func(data)


@FUZZ
@given(packet=st.binary(min_size=1, max_size=SEND_MAX))
def test_frames_sent_are_the_smp_packages(native, packet):
    """The firmware's 127-byte lines are byte for byte what ``smp.packet.encode`` writes with
    that line length (its newline counted in 128), and the host's decoder takes them back."""
    wire = native.send(packet)
    assert wire == b"".join(smppacket.encode(packet, line_length=128))
    assert smp_console.ConsoleDecoder(max_packet=1024).feed(wire) == [packet]


@FUZZ
@given(packet=st.binary(min_size=1, max_size=PACKET_MAX - 4))
def test_every_packet_that_fits_is_received(native, packet):
    assert native.feed(smp_console.encode(packet)) == [packet]


def line_of(text: bytes) -> bytes:
    return text.replace(b"\n", b"") + b"\n"


packet_lines = st.binary(min_size=0, max_size=PACKET_MAX + 20).map(smp_console.encode)
pieces = st.one_of(
    packet_lines,
    st.tuples(packet_lines, edits).map(lambda pair: mutate(*pair)),
    packet_lines.map(lambda wire: b"".join(wire.splitlines(keepends=True)[1:])),  # no start
    st.binary(max_size=150).map(line_of),  # console text
    st.tuples(st.sampled_from([b"\x06\x09", b"\x04\x14"]), st.binary(max_size=200)).map(
        lambda pair: line_of(pair[0] + pair[1])
    ),
    st.integers(120, 300).map(lambda n: b"\x06\x09" + b"QUFB" * (n // 4) + b"\n"),  # overlong
    st.binary(max_size=40),
)


@FUZZ
@given(stream=st.lists(pieces, max_size=8).map(b"".join))
def test_framing_agrees_with_the_simulators_decoder(native, stream):
    """On any stream of lines, whole, broken, overlong or not SMP at all, the firmware takes
    the packets the Python simulator's decoder takes (128-byte lines, 384-byte buffer)."""
    decoded = smp_console.ConsoleDecoder().feed(stream)
    assert native.feed(stream) == [item for item in decoded if isinstance(item, bytes)]


@pytest.mark.skipif(bool(os.environ.get(LIBRARY_ENV)), reason="this is the sanitized run")
def test_parsers_under_sanitizers(tmp_path):
    """The tests above, again, against a build with AddressSanitizer and UBSan (any finding
    aborts), in a child Python that preloads libasan; first a read one byte past an input
    proves the sanitizer is watching."""
    if shutil.which("gcc") is None:
        pytest.skip("no host gcc")
    runtime = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not os.path.isabs(runtime):
        pytest.skip("gcc has no AddressSanitizer runtime")
    library = build(tmp_path / "libfwcodec-asan.so", sanitize=True)
    env = dict(os.environ, LD_PRELOAD=runtime, ASAN_OPTIONS="detect_leaks=0")
    env[LIBRARY_ENV] = str(library)
    probe = (
        "import sys; from tests.mcu.test_qemu_smp_codec import Exact, Native\n"
        "native = Native(sys.argv[1])\n"
        "with Exact(bytes.fromhex('a2616101')) as buf:\n"
        "    native.lib.cbor_map_get(buf.address, buf.size + 1, b'b', None)\n"
    )
    caught = subprocess.run(
        [sys.executable, "-c", probe, str(library)],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert caught.returncode != 0 and "heap-buffer-overflow" in caught.stderr, caught.stderr
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "passed" in done.stdout and " 1 skipped" in done.stdout, done.stdout[-500:]


def test_map_header_cannot_claim_more_pairs_than_bytes(native):
    assert native.map_get(bytes([0xBA]) + struct.pack(">I", 2**31), b"k")[0] == -1
