"""Tests for the AES-256 CTR_DRBG: NIST CAVP known answers, chunking, reseed limit, validation."""

from __future__ import annotations

import copy
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_appliance.core.drbg import (
    MAX_BYTES_PER_REQUEST,
    RESEED_INTERVAL,
    SEEDLEN,
    CtrDrbg,
    DrbgError,
    ReseedRequired,
)

SECTIONS = {"[AES-256 use df]": True, "[AES-256 no df]": False}
FILES = ("CTR_DRBG_no_reseed.rsp", "CTR_DRBG_pr_false.rsp")
# Each file holds 16 sections of 15 cases per AES-256 variant; asking for
# exactly that many keeps a broken parser or a truncated file from passing.
CASES_PER_FILE_AND_VARIANT = 240


# NIST CAVP files copied into the repository (see tests/vectors/README).
VECTORS_DIR = Path(__file__).resolve().parent / "vectors"


@dataclass
class Case:
    """One CAVP test case with the header of the section it came from."""

    file: str
    use_df: bool
    section: int
    header: dict[str, str]
    values: dict[str, str] = field(default_factory=dict)
    additional: list[bytes] = field(default_factory=list)

    def get(self, name: str) -> bytes:
        """Return a hex field as bytes (an empty field is empty bytes)."""
        return bytes.fromhex(self.values[name])

    @property
    def case_id(self) -> str:
        """A test id that names file, variant, section, input lengths and COUNT."""
        stem = self.file.removeprefix("CTR_DRBG_").removesuffix(".rsp")
        df = "df" if self.use_df else "nodf"
        return (
            f"{stem}-{df}-s{self.section}"
            f"-P{self.header['PersonalizationStringLen']}"
            f"-A{self.header['AdditionalInputLen']}-c{self.values['COUNT']}"
        )


def parse_rsp(path: Path) -> list[Case]:
    """Return the AES-256 cases (with and without df) of one CAVP .rsp file."""
    cases: list[Case] = []
    variant: bool | None = None
    header: dict[str, str] = {}
    section = -1
    current: Case | None = None
    in_header = False
    for raw in path.read_text(encoding="ascii").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if not in_header:
                variant, header, in_header = None, {}, True
                section += 1
                current = None
            if line in SECTIONS:
                variant = SECTIONS[line]
            elif "=" in line:
                key, _, value = line[1:-1].partition("=")
                header[key.strip()] = value.strip()
            continue
        in_header = False
        if variant is None:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if key == "COUNT":
            current = Case(path.name, variant, section, header, {"COUNT": value})
            cases.append(current)
        elif current is not None and key == "AdditionalInput":
            current.additional.append(bytes.fromhex(value))
        elif current is not None:
            current.values[key] = value
    return cases


ALL_CASES = [case for name in FILES for case in parse_rsp(VECTORS_DIR / name)]


def test_every_aes256_section_is_loaded() -> None:
    """Every file contributes all its AES-256 cases for both variants and all input lengths."""
    per_group = Counter((case.file, case.use_df) for case in ALL_CASES)
    for name in FILES:
        for use_df in (True, False):
            assert per_group[(name, use_df)] == CASES_PER_FILE_AND_VARIANT
    lengths = {
        (
            case.use_df,
            case.header["PersonalizationStringLen"],
            case.header["AdditionalInputLen"],
        )
        for case in ALL_CASES
    }
    assert lengths == {
        (True, "0", "0"),
        (True, "0", "256"),
        (True, "256", "0"),
        (True, "256", "256"),
        (False, "0", "0"),
        (False, "0", "384"),
        (False, "384", "0"),
        (False, "384", "384"),
    }
    ids = [case.case_id for case in ALL_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.case_id for case in ALL_CASES])
def test_cavp_known_answer(case: Case) -> None:
    """The second generate matches NIST's ReturnedBits."""
    assert len(case.additional) == 2
    drbg = CtrDrbg(
        case.get("EntropyInput"),
        nonce=case.get("Nonce"),
        personalization=case.get("PersonalizationString"),
        use_df=case.use_df,
    )
    if "EntropyInputReseed" in case.values:
        drbg.reseed(case.get("EntropyInputReseed"), case.get("AdditionalInputReseed"))
    expected = case.get("ReturnedBits")
    drbg.generate(len(expected), case.additional[0])
    assert drbg.generate(len(expected), case.additional[1]) == expected


class ReferenceDrbg:
    """A deliberately slow, block-at-a-time CTR_DRBG written straight from the spec text.

    It shares no code with the module under test, so agreeing with it over
    random sizes checks the keystream shortcut (partial blocks, the Update
    that continues the keystream, counter wrap-around).
    """

    def __init__(self, key: bytes, v: bytes) -> None:
        self.key = key
        self.v = int.from_bytes(v, "big")

    def _block(self) -> bytes:
        self.v = (self.v + 1) % 2**128
        enc = Cipher(algorithms.AES(self.key), modes.ECB()).encryptor()
        return enc.update(self.v.to_bytes(16, "big"))

    def update(self, provided: bytes) -> None:
        temp = b"".join(self._block() for _ in range(3))
        temp = bytes(a ^ b for a, b in zip(temp, provided, strict=True))
        self.key, self.v = temp[:32], int.from_bytes(temp[32:], "big")

    def generate_no_df(self, n: int, additional: bytes) -> bytes:
        padded = additional + bytes(SEEDLEN - len(additional))
        if additional:
            self.update(padded)
        out = b""
        while len(out) < n:
            out += self._block()
        self.update(padded)
        return out[:n]


def _state(drbg: CtrDrbg) -> tuple[bytes, bytes]:
    # Tests only: reaching into the working state is the one way to compare
    # against the reference and to place V next to 2^128.
    return drbg._key, drbg._v


@settings(max_examples=60, deadline=None)
@given(
    entropy=st.binary(min_size=SEEDLEN, max_size=SEEDLEN),
    sizes=st.lists(st.integers(0, 200), min_size=1, max_size=6),
    additional=st.binary(max_size=SEEDLEN),
)
def test_matches_block_at_a_time_reference(
    entropy: bytes, sizes: list[int], additional: bytes
) -> None:
    """Any mix of request sizes (aligned or not) gives the spec's bytes and state."""
    drbg = CtrDrbg(entropy, use_df=False)
    reference = ReferenceDrbg(*_state(drbg))
    for size in sizes:
        assert drbg.generate(size, additional) == reference.generate_no_df(
            size, additional
        )
    assert _state(drbg) == (reference.key, reference.v.to_bytes(16, "big"))


def test_openssl_ctr_wraps_the_whole_128_bit_counter() -> None:
    """AES-CTR from ``cryptography`` goes from 2^128 - 1 to 0, as CTR_DRBG's increment does."""
    key = bytes(range(32))
    stream = (
        Cipher(algorithms.AES(key), modes.CTR(b"\xff" * 16))
        .encryptor()
        .update(bytes(32))
    )
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    assert stream == ecb.update(b"\xff" * 16 + bytes(16))


@pytest.mark.parametrize("distance", [1, 2, 3, 5])
def test_generate_across_counter_wrap(distance: int) -> None:
    """With V just below 2^128, output and next state still follow the spec."""
    drbg = CtrDrbg(bytes(range(SEEDLEN)), use_df=False)
    v = (2**128 - distance).to_bytes(16, "big")
    drbg._v = v
    reference = ReferenceDrbg(drbg._key, v)
    assert drbg.generate(100) == reference.generate_no_df(100, b"")
    assert _state(drbg) == (reference.key, reference.v.to_bytes(16, "big"))


@pytest.mark.parametrize("use_df", [True, False])
def test_large_request_is_a_run_of_standard_requests(use_df: bool) -> None:
    """200 KiB equals generate(64 KiB, extra) followed by plain requests, and counts each."""
    seed = bytes(range(SEEDLEN))
    extra = b"request-specific input"
    size = 200 * 1024
    big = CtrDrbg(seed, use_df=use_df)
    small = CtrDrbg(seed, use_df=use_df)
    out = big.generate(size, extra)
    assert len(out) == size
    expected = small.generate(MAX_BYTES_PER_REQUEST, extra)
    remaining = size - MAX_BYTES_PER_REQUEST
    while remaining:
        step = min(remaining, MAX_BYTES_PER_REQUEST)
        expected += small.generate(step)
        remaining -= step
    assert out == expected
    assert big.reseed_counter == small.reseed_counter == 1 + 4
    assert big.generate(64) == small.generate(64)


def test_request_at_the_limit_is_one_request() -> None:
    """Exactly MAX_BYTES_PER_REQUEST bytes is served by a single request."""
    drbg = CtrDrbg(bytes(32))
    assert len(drbg.generate(MAX_BYTES_PER_REQUEST)) == MAX_BYTES_PER_REQUEST
    assert drbg.reseed_counter == 2


def test_zero_bytes_is_a_request_that_advances_the_state() -> None:
    """generate(0) returns nothing but still steps the state, as the spec does."""
    a = CtrDrbg(bytes(32))
    b = CtrDrbg(bytes(32))
    assert a.generate(0) == b""
    assert a.reseed_counter == 2
    assert a.generate(32) != b.generate(32)


def test_reseed_counter_limit() -> None:
    """Past the reseed interval generate refuses, changes nothing, and works after reseed."""
    drbg = CtrDrbg(bytes(32), reseed_interval=3)
    twin = CtrDrbg(bytes(32), reseed_interval=3)
    for _ in range(3):
        assert drbg.generate(16) == twin.generate(16)
    assert drbg.reseed_counter == 4
    with pytest.raises(ReseedRequired):
        drbg.generate(16)
    assert drbg.reseed_counter == 4
    drbg.reseed(b"\x01" * 32)
    twin.reseed(b"\x01" * 32)
    assert drbg.reseed_counter == 1
    assert drbg.generate(16) == twin.generate(16)


def test_reseed_limit_refuses_a_chunked_request_up_front() -> None:
    """A multi-request call that would pass the limit yields nothing rather than a prefix."""
    drbg = CtrDrbg(bytes(32), reseed_interval=2)
    twin = CtrDrbg(bytes(32), reseed_interval=2)
    with pytest.raises(ReseedRequired):
        drbg.generate(3 * MAX_BYTES_PER_REQUEST)
    assert drbg.reseed_counter == 1
    assert drbg.generate(2 * MAX_BYTES_PER_REQUEST) == twin.generate(
        2 * MAX_BYTES_PER_REQUEST
    )


def test_default_reseed_interval() -> None:
    """The default limit is SP 800-90A's 2^48 requests."""
    assert CtrDrbg(bytes(32)).reseed_interval == RESEED_INTERVAL == 2**48


@pytest.mark.parametrize("interval", [0, -1, 2**48 + 1])
def test_reseed_interval_must_be_in_range(interval: int) -> None:
    """The reseed interval can be lowered, never raised past the spec's limit."""
    with pytest.raises(DrbgError):
        CtrDrbg(bytes(32), reseed_interval=interval)


@pytest.mark.parametrize("length", [0, 16, 31])
def test_df_rejects_short_entropy(length: int) -> None:
    """With the df, less than 256 bits of entropy input is refused, at instantiate and reseed."""
    with pytest.raises(DrbgError):
        CtrDrbg(bytes(length))
    drbg = CtrDrbg(bytes(32))
    with pytest.raises(DrbgError):
        drbg.reseed(bytes(length))


@pytest.mark.parametrize("length", [32, 47, 49, 64])
def test_no_df_requires_exactly_seedlen_entropy(length: int) -> None:
    """Without the df the entropy input is exactly 48 bytes, at instantiate and reseed."""
    with pytest.raises(DrbgError):
        CtrDrbg(bytes(length), use_df=False)
    drbg = CtrDrbg(bytes(SEEDLEN), use_df=False)
    with pytest.raises(DrbgError):
        drbg.reseed(bytes(length))


def test_no_df_rejects_long_personalization_and_additional_input() -> None:
    """Without the df, inputs longer than 48 bytes are refused and the state is untouched."""
    too_long = bytes(SEEDLEN + 1)
    with pytest.raises(DrbgError):
        CtrDrbg(bytes(SEEDLEN), personalization=too_long, use_df=False)
    drbg = CtrDrbg(bytes(SEEDLEN), use_df=False)
    twin = CtrDrbg(bytes(SEEDLEN), use_df=False)
    with pytest.raises(DrbgError):
        drbg.reseed(bytes(SEEDLEN), too_long)
    with pytest.raises(DrbgError):
        drbg.generate(16, too_long)
    assert drbg.reseed_counter == 1
    assert drbg.generate(16) == twin.generate(16)


def test_df_accepts_long_inputs() -> None:
    """With the df, personalization and additional input may exceed 48 bytes."""
    drbg = CtrDrbg(bytes(64), nonce=bytes(16), personalization=bytes(100))
    drbg.reseed(bytes(40), bytes(200))
    assert len(drbg.generate(10, bytes(300))) == 10


def test_negative_size_is_refused() -> None:
    """A negative byte count is an input error, not an empty answer."""
    with pytest.raises(DrbgError):
        CtrDrbg(bytes(32)).generate(-1)


def test_drbg_error_is_a_value_error() -> None:
    """Callers that catch ValueError also catch DrbgError."""
    assert issubclass(DrbgError, ValueError)


def test_inputs_may_be_any_bytes_like() -> None:
    """bytearray and memoryview inputs give the same output as bytes."""
    seed = bytes(range(SEEDLEN))
    a = CtrDrbg(seed, nonce=b"n" * 16, personalization=b"p")
    b = CtrDrbg(
        memoryview(seed), nonce=bytearray(b"n" * 16), personalization=memoryview(b"p")
    )
    assert a.generate(40, b"x") == b.generate(40, bytearray(b"x"))


def test_properties() -> None:
    """use_df and reseed_counter are visible and read-only."""
    drbg = CtrDrbg(bytes(SEEDLEN), use_df=False)
    assert drbg.use_df is False
    assert drbg.reseed_counter == 1
    with pytest.raises(AttributeError):
        drbg.reseed_counter = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        drbg.use_df = True  # type: ignore[misc]


def test_repr_does_not_leak_state() -> None:
    """repr shows the mode and counter but no byte of Key or V."""
    drbg = CtrDrbg(bytes(range(32)), nonce=bytes(16))
    drbg.generate(64)
    key, v = _state(drbg)
    text = repr(drbg)
    assert "use_df=True" in text
    assert "reseed_counter=2" in text
    for secret in (key, v):
        assert secret.hex() not in text
        assert repr(secret) not in text
        assert secret.hex()[:8] not in text
    assert str(drbg) == text


def test_state_cannot_be_pickled_or_copied() -> None:
    """A copy would replay the same output and a pickle would leak the state."""
    drbg = CtrDrbg(bytes(32))
    with pytest.raises(TypeError):
        pickle.dumps(drbg)
    with pytest.raises(TypeError):
        copy.copy(drbg)
    with pytest.raises(TypeError):
        copy.deepcopy(drbg)
