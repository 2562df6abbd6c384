"""Calibrate a servo-bus arm, or check a calibration against it.

    python -m apprentice.calibration.arm_cli calibrate --robot so101 --arm follower
    python -m apprentice.calibration.arm_cli verify --robot so101 --arm follower -c FILE

Every step waits for one line on stdin (Enter), so a script can drive it through a pipe; with
stdin closed early it stops without writing anything. The prompts live here only; the work is
done by `apprentice.calibration.arm`.
"""

from __future__ import annotations

import argparse
import select
import sys
from pathlib import Path

from apprentice.calibration.arm import (
    ArmCalibration,
    RangeRecorder,
    check_servos,
    clear_offsets,
    compute_calibration,
    describe,
    direction,
    open_bus,
    read_ticks,
    verify,
    write_offsets,
)
from apprentice.drivers.factory import ArmConfig, arm_config
from apprentice.drivers.link import BusError
from apprentice.errors import run_command

SAMPLE_PERIOD_S = 0.01  # range recording: 100 samples/s keeps up with a hand-moved joint


class Aborted(Exception):
    """stdin closed before the step was confirmed."""


def ask(prompt: str) -> None:
    print(f"{prompt} [Enter]", flush=True)
    if not sys.stdin.readline():
        raise Aborted(prompt)


def default_output(cfg: ArmConfig) -> Path:
    return Path.home() / ".apprentice" / "calibration" / f"{cfg.robot}_{cfg.name}.yaml"


def record_ranges(bus, cfg: ArmConfig, reference: dict[str, int]) -> RangeRecorder:
    """Samples every joint until a line arrives on stdin."""
    print(
        "Move every joint slowly through its whole range of motion (gripper: fully closed and "
        "fully open), then press [Enter]",
        flush=True,
    )
    recorder = RangeRecorder(reference)
    live = sys.stdout.isatty()
    while not select.select([sys.stdin], [], [], SAMPLE_PERIOD_S)[0]:
        try:
            recorder.add(read_ticks(bus, cfg))
        except BusError:
            continue  # a lost sample: the next one covers the same motion
        if live and recorder.samples % 20 == 0:
            spans = " ".join(f"{n}:{hi - lo}" for n, (lo, hi) in recorder.ranges.items())
            print(f"\r{spans}", end="", flush=True)
    if not sys.stdin.readline():
        raise Aborted("range recording")
    if live:
        print()
    return recorder


def calibrate(a: argparse.Namespace) -> int:
    cfg = arm_config(a.robot, a.arm)
    port = a.port or cfg.port
    bus = open_bus(cfg, port, a.baudrate or cfg.baudrate)
    try:
        problems = check_servos(bus, cfg)
        if problems:
            print("cannot calibrate:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 1
        clear_offsets(bus, cfg)  # torque off too: the arm goes limp
        print(f"Calibrating {cfg.robot}/{cfg.name} on {port}; torque is off.", flush=True)
        ask(f"Put the arm in the reference pose: {cfg.reference_pose or 'see the robot config'}.")
        reference = read_ticks(bus, cfg)
        signs = {}
        for j in cfg.joints:
            what = "open the gripper a little" if j.gripper else "move it a little"
            while True:
                ask(f"{j.name}: from the reference pose, {what} in its positive direction.")
                try:
                    signs[j.name] = direction(reference[j.name], read_ticks(bus, cfg)[j.name])
                    break
                except ValueError as exc:
                    print(f"{j.name}: {exc}; again", flush=True)
        recorder = record_ranges(bus, cfg, reference)
        cal = compute_calibration(cfg, reference, recorder.ranges, signs)
        write_offsets(bus, cal)
        problems = verify(bus, cfg, cal)
    except Aborted as exc:
        print(f"stdin closed at '{exc}': nothing written", file=sys.stderr)
        return 2
    except (ValueError, BusError) as exc:
        print(f"calibration failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bus.link.close()
    if problems:
        print("offsets written but not read back:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    out = cal.save(a.out or default_output(cfg))
    print("\n".join(describe(cal)))
    print(f"calibration written to the servos and to {out}", flush=True)
    return 0


def check(a: argparse.Namespace) -> int:
    cfg = arm_config(a.robot, a.arm)
    cal = ArmCalibration.load(a.calibration)
    bus = open_bus(cfg, a.port or cfg.port, a.baudrate or cfg.baudrate)
    try:
        problems = verify(bus, cfg, cal)
        if not problems:
            cal.arm_spec(cfg)  # the recorded ranges still fit the config's limits
    except ValueError as exc:
        problems = [str(exc)]
    finally:
        bus.link.close()
    for p in problems:
        print(p, file=sys.stderr)
    print("calibration matches the servos" if not problems else "calibration does NOT match")
    return 1 if problems else 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="apprentice calibrate-arm", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    cal = sub.add_parser("calibrate", help="calibrate interactively; writes servos and a YAML")
    cal.add_argument("-o", "--out", help="YAML to write (default ~/.apprentice/calibration/)")
    cal.set_defaults(func=calibrate)
    ver = sub.add_parser("verify", help="check a calibration YAML against the servos")
    ver.add_argument("-c", "--calibration", required=True, help="calibration YAML")
    ver.set_defaults(func=check)
    for p in (cal, ver):
        p.add_argument("--robot", required=True, help="robot config name or YAML path")
        p.add_argument("--arm", required=True, help="arm of the robot config (e.g. follower)")
        p.add_argument("--port", default="", help="serial port (default: the robot config's)")
        p.add_argument("--baudrate", type=int, default=0, help="default: the robot config's")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    return run_command(a.func, a, also=(ValueError, OSError), prog="apprentice calibrate-arm")


if __name__ == "__main__":
    sys.exit(main())
