"""Framing, checksums and unit conversions, against published packets and round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apprentice.drivers import dynamixel as dxl
from apprentice.drivers import feetech as ft
from apprentice.drivers.bus_arm import JointCalibration


def test_crc16_matches_the_buypass_check_value() -> None:
    # CRC-16/BUYPASS (poly 0x8005, init 0) of "123456789" is 0xFEE8.
    assert dxl.crc16(b"123456789") == 0xFEE8


@pytest.mark.parametrize(
    ("servo_id", "code", "params", "wire"),
    [
        # Examples from the ROBOTIS Protocol 2.0 e-manual.
        (1, 0x01, b"", "ff ff fd 00 01 03 00 01 19 4e"),  # ping
        (1, 0x02, bytes([0x84, 0, 4, 0]), "ff ff fd 00 01 07 00 02 84 00 04 00 1d 15"),  # read
        (1, 0x55, bytes([0, 6, 4, 0x26]), "ff ff fd 00 01 07 00 55 00 06 04 26 65 5d"),  # status
    ],
)
def test_dynamixel_packets_match_the_manual(
    servo_id: int, code: int, params: bytes, wire: str
) -> None:
    packet = dxl.encode(servo_id, code, params)
    assert packet.hex(" ") == wire
    frame, used = dxl.split(packet)
    assert used == len(packet)
    assert frame == dxl.Frame(servo_id, code, params, True)


@given(st.integers(0, 252), st.integers(0, 255), st.binary(max_size=64), st.binary(max_size=8))
def test_dynamixel_round_trip_with_stuffing_and_noise(
    servo_id: int, code: int, params: bytes, noise: bytes
) -> None:
    params = params + b"\xff\xff\xfd" + params  # always something to stuff
    packet = dxl.encode(servo_id, code, params)
    assert dxl.HEADER not in packet[4:]
    buf = bytearray(noise.replace(b"\xff", b"") + packet)
    frame, used = dxl.split(buf)
    while frame is None:  # noise is dropped first
        assert used > 0
        del buf[:used]
        frame, used = dxl.split(buf)
    assert frame == dxl.Frame(servo_id, code, params, True)


def test_dynamixel_split_waits_for_the_whole_packet_and_flags_bad_crc() -> None:
    packet = dxl.encode(3, 0x55, b"\x00\x01\x02")
    assert dxl.split(packet[:-1]) == (None, 0)
    bad = packet[:-1] + bytes([packet[-1] ^ 1])
    frame, _ = dxl.split(bad)
    assert frame is not None and not frame.checksum_ok


def test_feetech_packets() -> None:
    assert ft.encode(1, 0x01, b"").hex(" ") == "ff ff 01 02 01 fb"  # ping id 1
    # read 2 bytes at 56 (present position) from id 1
    assert ft.encode(1, 0x02, bytes([56, 2])).hex(" ") == "ff ff 01 04 02 38 02 be"


@given(st.integers(0, 253), st.integers(0, 255), st.binary(max_size=100), st.binary(max_size=8))
def test_feetech_round_trip_with_noise(
    servo_id: int, code: int, params: bytes, noise: bytes
) -> None:
    packet = ft.encode(servo_id, code, params)
    buf = bytearray(noise.replace(b"\xff", b"") + packet)
    frame, used = ft.split(buf)
    while frame is None:
        assert used > 0
        del buf[:used]
        frame, used = ft.split(buf)
    assert frame == ft.Frame(servo_id, code, params, True)
    corrupted = bytearray(packet)
    corrupted[-1] ^= 0x10
    assert ft.split(corrupted)[0].checksum_ok is False


@given(st.integers(-32767, 32767))
def test_sign_magnitude_round_trip(value: int) -> None:
    raw = ft.to_sign_magnitude(value, 15)
    assert 0 <= raw <= 0xFFFF
    assert ft.sign_magnitude(raw, 15) == value


def test_sts3215_state_decoding() -> None:
    # position 3000, speed -100 ticks/s, load -50 (0.1 %), 12.0 V, 30 °C
    data = bytes([3000 & 0xFF, 3000 >> 8, 100, 0x80, 50, 0x04, 120, 30])
    ticks, vel, effort = ft.STS3215().decode_state(data)
    assert ticks == 3000
    assert vel == pytest.approx(-100 * 2 * math.pi / 4096)
    assert effort == pytest.approx(-0.05 * 2.94)


def test_xseries_state_decoding() -> None:
    data = (-20).to_bytes(2, "little", signed=True) + (10).to_bytes(4, "little", signed=True)
    data += (1024).to_bytes(4, "little", signed=True)
    ticks, vel, effort = dxl.XL330_M288.decode_state(data)
    assert ticks == 1024
    assert vel == pytest.approx(10 * 0.229 * 2 * math.pi / 60)
    assert effort == pytest.approx(-0.020 * 0.52 / 1.47)


@given(st.integers(0, 4095), st.integers(-500, 500), st.sampled_from([1, -1]))
def test_revolute_calibration_round_trip(ticks: int, offset: int, sign: int) -> None:
    cal = JointCalibration(1, homing_offset=offset, sign=sign)
    assert cal.to_ticks(cal.to_joint(ticks)) == ticks
    assert cal.to_joint(2048 + offset) == 0.0
    assert cal.to_joint(2048 + offset + 1024) == pytest.approx(sign * math.pi / 2)


def test_gripper_linear_calibration() -> None:
    cal = JointCalibration(7, linear_ticks=(2000, 3000), linear_values=(0.0, 0.08))
    assert cal.to_joint(2000) == 0.0
    assert cal.to_joint(2500) == pytest.approx(0.04)
    assert cal.to_ticks(0.08) == 3000


def test_calibration_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        JointCalibration(1, sign=2)
    with pytest.raises(ValueError):
        JointCalibration(1, linear_ticks=(5, 5))
