"""The QEMU firmware's own SHA-512 and Ed25519 verification, built natively with the host gcc.

The same C files the firmware links (``firmware_sim/qemu/sha512.c``, ``ed25519.c``) become a
shared object called through ctypes: RFC 8032 section 7.1's vectors must verify, tampered or
malformed ones must not, and random keys and messages must agree with ``cryptography``.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.qemu_harness import FIRMWARE_DIR

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493

# RFC 8032 section 7.1: (name, secret key, public key, message, signature), all hex.
RFC8032 = [
    (
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (
        "TEST 1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12ee50f8f54e9f77b1"
        "e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d"
        "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a"
        "7363c344fe6b199ee5d02e82d522c4feba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e"
        "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10"
        "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1"
        "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2d17ba70eb6248e594e1a2297acbbb39d"
        "502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270"
        "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089b"
        "eccf80cfe2df16a2cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
        "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae0784504df543af8969b"
        "e3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7"
        "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c42f58c30c04aafdb038dda0847dd988d"
        "cda6f3bfd15c4b4c4525004aa06eeff8ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df"
        "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7"
        "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4"
        "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a32ef5b52a1ecc820e308aa342721aac09"
        "43bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f"
        "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f161"
        "0e4eafe595f6d9d90d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
        "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef68d3a101e8a3b8ca"
        "c60c905c15fc910840b94c00a0b9d0",
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    (
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        hashlib.sha512(b"abc").hexdigest(),
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


class Sha512Ctx(ctypes.Structure):
    _fields_ = [
        ("state", ctypes.c_uint64 * 8),
        ("length", ctypes.c_uint64),
        ("block", ctypes.c_uint8 * 128),
        ("used", ctypes.c_uint32),
    ]


class Native:
    """The firmware's C verifier as a Python callable."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    def verify(self, signature: bytes, public: bytes, message: bytes) -> bool:
        return bool(self.lib.ed25519_verify(signature, public, message, len(message)))

    def sha512(self, data: bytes) -> bytes:
        ctx, out = Sha512Ctx(), ctypes.create_string_buffer(64)
        self.lib.sha512_init(ctypes.byref(ctx))
        self.lib.sha512_update(ctypes.byref(ctx), data, len(data))
        self.lib.sha512_final(ctypes.byref(ctx), out)
        return out.raw


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Native:
    if shutil.which("gcc") is None:
        pytest.skip("no host gcc to build the firmware's verifier natively")
    lib = tmp_path_factory.mktemp("ed25519") / "libfwcrypto.so"
    sources = [str(FIRMWARE_DIR / name) for name in ("sha512.c", "ed25519.c")]
    flags = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    subprocess.run(["gcc", *flags, "-o", str(lib), *sources], check=True)
    return Native(ctypes.CDLL(str(lib)))


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize(
    "name,secret,public,message,signature", RFC8032, ids=[v[0] for v in RFC8032]
)
def test_rfc8032_vectors_verify(native, name, secret, public, message, signature):
    sig, pub, msg = bytes.fromhex(signature), bytes.fromhex(public), bytes.fromhex(message)
    # The transcription is right if the reference signer reproduces it.
    signer = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert raw_public(signer) == pub and signer.sign(msg) == sig
    assert native.verify(sig, pub, msg)
    assert not native.verify(flip(sig, 5), pub, msg)  # R
    assert not native.verify(flip(sig, 300), pub, msg)  # S
    assert not native.verify(sig, flip(pub, 9), msg)
    assert not native.verify(sig, pub, msg + b"\x00")
    if msg:
        assert not native.verify(sig, pub, flip(msg, 0))


@pytest.mark.parametrize("size", [0, 1, 111, 112, 127, 128, 129, 239, 240, 1000])
def test_sha512_matches_hashlib_across_block_edges(native, size):
    data = bytes(range(256)) * 4
    assert native.sha512(data[:size]) == hashlib.sha512(data[:size]).digest()


def test_s_not_below_the_group_order_is_refused(native):
    """S + L satisfies the same group equation, so only the range check refuses it."""
    key = Ed25519PrivateKey.generate()
    sig = key.sign(b"image digest")
    s = int.from_bytes(sig[32:], "little")
    big = sig[:32] + (s + L).to_bytes(32, "little")
    assert s + L < 2**256
    assert native.verify(sig, raw_public(key), b"image digest")
    assert not native.verify(big, raw_public(key), b"image digest")
    assert not native.verify(sig[:32] + L.to_bytes(32, "little"), raw_public(key), b"x")


def identity_key_signature(message: bytes) -> bytes:
    """A valid signature under the identity point A (y = 1): [k]A vanishes, so R = [r]B, S = r.
    [r]B is the public key of any seed, r its clamped secret scalar."""
    seed = hashlib.sha256(message).digest()
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] = (h[31] & 127) | 64
    r = int.from_bytes(h, "little") % L
    return raw_public(Ed25519PrivateKey.from_private_bytes(seed)) + r.to_bytes(32, "little")


def test_non_canonical_key_encoding_is_refused(native):
    sig = identity_key_signature(b"m")
    canonical = (1).to_bytes(32, "little")
    assert native.verify(sig, canonical, b"m")
    assert not native.verify(sig, (P + 1).to_bytes(32, "little"), b"m")  # y = p + 1
    negative_zero = (1 | 1 << 255).to_bytes(32, "little")  # x = 0 with the sign bit set
    assert not native.verify(sig, negative_zero, b"m")


def test_key_not_on_the_curve_is_refused(native):
    # y = 2: (y^2 - 1) / (d y^2 + 1) is not a square mod p, so no point has this y.
    sig = Ed25519PrivateKey.generate().sign(b"m")
    assert not native.verify(sig, (2).to_bytes(32, "little"), b"m")


def test_non_canonical_r_is_refused(native):
    """Under the identity key, R = identity and S = 0 is a valid signature of anything; the same
    R written with y = p + 1 must not verify."""
    identity = (1).to_bytes(32, "little")
    assert native.verify(identity + bytes(32), identity, b"m")
    assert not native.verify((P + 1).to_bytes(32, "little") + bytes(32), identity, b"m")


@settings(max_examples=40, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    message=st.binary(max_size=300),
    tamper=st.none() | st.tuples(st.sampled_from(["sig", "key", "msg"]), st.integers(0, 511)),
)
def test_agrees_with_cryptography(native, seed, message, tamper):
    key = Ed25519PrivateKey.from_private_bytes(seed)
    sig, pub, msg = key.sign(message), raw_public(key), message
    if tamper is not None:
        part, bit = tamper
        if part == "sig":
            sig = flip(sig, bit)
        elif part == "key":
            pub = flip(pub, bit % 256)
        else:
            msg = flip(msg, bit % (8 * len(msg))) if msg else b"\x01"
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
        expected = True
    except (InvalidSignature, ValueError):
        expected = False
    assert native.verify(sig, pub, msg) == expected
