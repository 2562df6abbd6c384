"""`ServoBusArm`: the `Arm` backend for Dynamixel X-series and Feetech STS3215 buses.

One sync read gets position, velocity and effort of every joint; one sync write sets every goal.
Fault policy (the peers' pain: one bad read killed the loop, nothing stopped a dead host, errors
were cleared behind the user's back):
- a timeout, bad checksum or wrong-id reply is retried (`retries` times); every one is counted
  in `counters`;
- a transaction that still fails raises `BusError`; after `max_failures` failed transactions in
  a row the arm enters a safe state: torque off is attempted, `ArmFaulted` is raised, and
  writes and torque-on are refused until an explicit `rearm()`;
- error bits in status packets are decoded per joint into `servo_errors` and kept until
  `clear_errors()`; nothing clears them on its own;
- on Dynamixel the Bus Watchdog is set at connect, so servos stop if this host goes silent; a
  fired watchdog is detected and is a fault (it needs `rearm()`).
Torque (an unplugged adapter left servos torqued and a command after `rearm()` moved them):
- while in the safe state every `read()` re-sends torque-off; after an I/O error (adapter
  unplugged) it also reopens the port every `REOPEN_INTERVAL_S`, so the servos, still powered,
  go limp as soon as the bus answers again, before any rearm;
- `rearm()` sends torque-off and checks every torque register reads back 0; goal writes are then
  refused (`WriteRefused`, counted in `refused_writes`) until `set_torque(True)`;
- torque-on first reads each servo's error state fresh (Feetech: the status error byte;
  Dynamixel: Hardware Error Status) and refuses (`TorqueRefused`), enabling none, if any
  servo reports an error.
The stamp of a reading is time.time() at the middle of the successful read transaction.

Neither protocol numbers its packets, so a reply that comes after its deadline looks like an
answer to the next request. After a timeout the line is drained until it has been quiet for
`timeout_s` before the retry, which discards replies up to about twice the timeout late; a reply
later still can be taken as the retry's answer (data older by up to that delay).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from apprentice.drivers.bus import ServoBus, SyncReadError
from apprentice.drivers.joints import RAD_PER_TICK, JointCalibration, ServoFamily
from apprentice.drivers.link import (
    BusCorrupt,
    BusError,
    BusTimeout,
    BusWrongId,
    ByteLink,
    SerialLink,
)
from apprentice.robot_io import ArmSpec, JointReading

log = logging.getLogger(__name__)

T = TypeVar("T")


REOPEN_INTERVAL_S = 0.5  # how often a faulted arm tries a failed port again


class ArmFaulted(BusError):
    """The arm is in its safe state; only `rearm()` brings it back."""


class WriteRefused(BusError):
    """A goal write while torque is off after `rearm()`: nothing moves until set_torque(True)."""


class TorqueRefused(BusError):
    """Torque-on refused because a servo reports a hardware error; torque stays off."""


COUNTER_NAMES = (
    "transactions",  # attempted, retries included
    "retries",
    "timeouts",  # replies that never came (per missing servo in a sync read)
    "checksum_errors",
    "wrong_ids",
    "io_errors",  # the port itself failed (unplugged adapter)
    "stale_bytes",  # late replies dropped before a transaction
    "failed_transactions",  # failed after every retry
    "servo_error_replies",  # status packets with a non-zero error byte
    "safe_state_entries",
    "rearms",
    "reopens",  # the port opened again after an I/O error
    "refused_writes",  # goal writes while torque is off after a rearm
)


class ServoBusArm:
    """An `Arm` on one servo bus. Connects (pings every servo, sets up the watchdog, goals to
    present positions) on construction; torque stays as it is until `set_torque`."""

    def __init__(
        self,
        port: str | ByteLink,
        family: ServoFamily,
        spec: ArmSpec,
        joints: Sequence[JointCalibration],
        *,
        baudrate: int = 1_000_000,
        timeout_s: float = 0.01,
        retries: int = 2,
        max_failures: int = 3,
        # Dynamixel Bus Watchdog: servos stop when the host is silent this long. 0.5 s, not
        # less: a Python host under load (GC, a busy 2-core computer) can pause a few hundred
        # ms between node start-up and the first read, and a false trip needs a rearm.
        watchdog_s: float = 0.5,
    ) -> None:
        if not 0.0 < timeout_s < math.inf or retries < 0:
            raise ValueError(f"bus timeout {timeout_s} s must be positive, retries {retries} >= 0")
        if len(joints) != spec.n_joints:
            raise ValueError(f"{len(joints)} calibrations for {spec.n_joints} joints")
        ids = [j.servo_id for j in joints]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate servo ids: {ids}")
        self._spec = spec
        self.family = family
        self.joints = tuple(joints)
        self.ids = ids
        self.retries = retries
        self.max_failures = max_failures
        self.watchdog_s = watchdog_s if family.watchdog_address is not None else 0.0
        self._port = port
        self._baudrate = baudrate
        self._timeout_s = timeout_s
        self._lock = threading.RLock()
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)
        self._errors: dict[str, set[str]] = {name: set() for name in spec.joint_names}
        self._consecutive = 0
        self._faulted: str | None = None
        self._torque = False
        self._writes_held = False  # after rearm(): goal writes refused until torque-on
        self._link_failed = False  # the port gave an I/O error: reopen it while faulted
        self._next_reopen = 0.0
        self._last_traffic = time.monotonic()
        self.bus = self._open()
        try:
            self._connect()
            self._hold_present()
        except BaseException:
            self.bus.link.close()
            raise

    # --- Arm protocol --------------------------------------------------------------------
    @property
    def spec(self) -> ArmSpec:
        return self._spec

    def read(self) -> JointReading:
        with self._lock:
            if self._faulted is not None:
                # A servo that was off the bus (or behind an unplugged adapter) when the safe
                # state began never heard the torque-off: repeat it while faulted, so one that
                # comes back goes limp too.
                self._reopen_if_failed()
                self._torque_off_best_effort()
            self._check_watchdog()
            (replies, t0, t1) = self._transact("read", self._sync_read_state)
        pos = np.empty(len(self.joints))
        vel = np.empty(len(self.joints))
        eff = np.empty(len(self.joints))
        for k, joint in enumerate(self.joints):
            ticks, rad_s, effort = self.family.decode_state(replies[joint.servo_id].data)
            pos[k] = joint.to_joint(ticks)
            vel[k] = rad_s / RAD_PER_TICK * joint.units_per_tick  # ticks/s → joint units/s
            eff[k] = effort * (joint.sign if joint.linear_ticks is None else 1.0)
        return JointReading(stamp=0.5 * (t0 + t1), position=pos, velocity=vel, effort=eff)

    def write(self, position: np.ndarray) -> None:
        q = np.asarray(position, dtype=float)
        if q.shape != (len(self.joints),):
            raise ValueError(f"expected {len(self.joints)} positions, got shape {q.shape}")
        with self._lock:
            self._refuse_if_faulted("write")
            if self._writes_held:
                self._counts["refused_writes"] += 1
                raise WriteRefused(
                    "goal write refused: torque is off since rearm(); set_torque(True) first "
                    "(it holds the present pose)"
                )
            self._check_watchdog()
            goals = {
                j.servo_id: self.family.encode_goal(j.to_ticks(v))
                for j, v in zip(self.joints, q, strict=True)
            }
            self._transact("write", lambda: self._sync_write_goals(goals))

    def set_torque(self, enabled: bool) -> None:
        with self._lock:
            if enabled:
                self._refuse_if_faulted("torque on")
                self._check_watchdog()
                self._refuse_if_servo_errors()
                self._hold_present()  # so torque-on does not jump to an old goal
            refused = []
            for servo_id in self.ids:
                reply = self._transact(
                    "torque",
                    lambda i=servo_id: self.bus.write(
                        i, self.family.torque_address, bytes([int(enabled)])
                    ),
                )
                self._note_errors(servo_id, reply.error)
                if self.family.instruction_failed(reply.error):
                    refused.append(self._spec.joint_names[self.ids.index(servo_id)])
            self._torque = enabled  # even if some refused: the others did switch
            if enabled and not refused:
                self._writes_held = False
            if refused:
                raise BusError(
                    f"torque {'on' if enabled else 'off'} refused by {refused}: {self.servo_errors}"
                )

    def close(self) -> None:
        with self._lock:
            try:
                self._torque_off_best_effort()
            finally:
                self.bus.link.close()

    def __enter__(self) -> ServoBusArm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- faults --------------------------------------------------------------------------
    @property
    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def servo_errors(self) -> dict[str, tuple[str, ...]]:
        """Error names seen per joint since the last `clear_errors()` (joints without: absent)."""
        with self._lock:
            return {name: tuple(sorted(e)) for name, e in self._errors.items() if e}

    @property
    def faulted(self) -> str | None:
        """Why the arm is in its safe state, or None."""
        return self._faulted

    def diagnostics(self) -> dict[str, Any]:
        """Counters, servo errors and the safe state as one snapshot, under the bus lock: read
        one by one, a safe state entered between the reads showed with its entry uncounted
        (CI: safe_state set, safe_state_entries 0)."""
        with self._lock:
            return {"bus": self.counters, "servo_errors": self.servo_errors,
                    "safe_state": self._faulted}  # fmt: skip

    def clear_errors(self) -> None:
        """Forgets recorded servo errors. On Dynamixel, servos with a latched hardware error are
        rebooted (their only way out; torque comes back off). Conditions still present are
        reported again by the next reply."""
        with self._lock:
            if self.family.hardware_error_address is not None:
                for joint, name in zip(self.joints, self._spec.joint_names, strict=True):
                    if "hardware_alert" in self._errors[name] and hasattr(self.bus, "reboot"):
                        self._transact("reboot", lambda i=joint.servo_id: self.bus.reboot(i))
            for e in self._errors.values():
                e.clear()

    def rearm(self) -> None:
        """Leaves the safe state: reopens the port if it failed, turns torque off and checks
        every torque register reads 0, pings every servo and resets the watchdog. Goal
        registers are left alone, and goal writes are refused until set_torque(True)."""
        with self._lock:
            self._consecutive = 0
            self._faulted = None
            try:
                if self._link_failed and isinstance(self._port, str):
                    self._reopen()
                self._torque_off_verified()
                self._connect()
            except (BusError, OSError) as exc:
                self._faulted = f"rearm failed: {exc}"
                raise ArmFaulted(self._faulted) from exc
            self._writes_held = True
            self._counts["rearms"] += 1

    # --- internals -----------------------------------------------------------------------
    def _open(self) -> ServoBus:
        link = (
            self._port
            if not isinstance(self._port, str)
            else SerialLink(self._port, self._baudrate)
        )
        return self.family.bus_class(link, timeout_s=self._timeout_s)

    def _reopen_if_failed(self) -> None:
        """While faulted after an I/O error: tries the port again, at most every
        REOPEN_INTERVAL_S (the node's read loop calls read() every tick)."""
        now = time.monotonic()
        if not (self._link_failed and isinstance(self._port, str)) or now < self._next_reopen:
            return
        self._next_reopen = now + REOPEN_INTERVAL_S
        try:
            self._reopen()
        except OSError:
            return  # the device is not back yet
        log.warning("servo bus %s open again; torque-off follows", self._port)

    def _reopen(self) -> None:
        """A new link first, then the dead one closed (its fd number is not reused meanwhile)."""
        bus = self._open()
        try:
            self.bus.link.close()
        except OSError:
            pass
        self.bus = bus
        self._link_failed = False
        self._counts["reopens"] += 1

    def _torque_off_verified(self) -> None:
        """Torque off on every servo, confirmed by reading each torque register back."""
        address = self.family.torque_address
        on: list[str] = []
        for _ in range(2):  # a servo that missed the broadcast gets a second one
            self._torque_off_best_effort()
            replies = self._transact("torque", lambda: self.bus.sync_read(self.ids, address, 1))
            names = zip(self._spec.joint_names, self.ids, strict=True)
            on = [n for n, i in names if replies[i].data[0]]
            if not on:
                return
        raise BusError(f"torque still on after torque-off: {on}")

    def _refuse_if_servo_errors(self) -> None:
        """Reads each servo's error state now (not the recorded history) and refuses torque-on,
        for every servo, if any reports a hardware error."""
        fam = self.family
        address = fam.hardware_error_address
        # Feetech: the error byte of any reply is the live condition; Dynamixel: the register.
        read_at = address if address is not None else fam.torque_address
        replies = self._transact("error check", lambda: self.bus.sync_read(self.ids, read_at, 1))
        problems = []
        for name, servo_id in zip(self._spec.joint_names, self.ids, strict=True):
            reply = replies[servo_id]
            if address is not None:
                value = reply.data[0]
                errors = fam.hardware_error_names(value) or ([f"0x{value:02x}"] if value else [])
                self._errors[name] |= {f"hw:{e}" for e in errors}
            else:
                errors = fam.error_names(reply.error)
                self._note_errors(servo_id, reply.error)
            if errors:
                problems.append(f"{name} (servo {servo_id}) reports {', '.join(errors)}")
        if problems:
            raise TorqueRefused(
                f"torque on refused, torque stays off: {'; '.join(problems)}"
                + (" (a Dynamixel keeps it until rebooted: clear_errors())" if address else "")
            )

    def _connect(self) -> None:
        for servo_id in self.ids:
            reply = self._transact("ping", lambda i=servo_id: self.bus.ping(i))
            self._note_errors(servo_id, reply.error)
        if self.family.watchdog_address is not None:
            value = math.ceil(self.watchdog_s / 0.020) if self.watchdog_s > 0 else 0
            for servo_id in self.ids:
                # A fired watchdog (0xFF) takes a 0 before any new value.
                for v in (0, value) if value else (0,):
                    self._transact(
                        "watchdog",
                        lambda i=servo_id, v=v: self.bus.write(
                            i, self.family.watchdog_address, bytes([v])
                        ),
                    )

    def _hold_present(self) -> None:
        replies, _, _ = self._transact("read", self._sync_read_state)
        goals = {
            i: self.family.encode_goal(self.family.decode_state(replies[i].data)[0])
            for i in self.ids
        }
        self._transact("write", lambda: self._sync_write_goals(goals))

    def _sync_read_state(self) -> tuple[dict, float, float]:
        t0 = time.time()
        replies = self.bus.sync_read(self.ids, self.family.state_address, self.family.state_length)
        t1 = time.time()
        for servo_id, reply in replies.items():
            if reply.error:
                self._note_errors(servo_id, reply.error)
        return replies, t0, t1

    def _sync_write_goals(self, goals: dict[int, bytes]) -> None:
        self.bus.sync_write(self.family.goal_address, self.family.goal_length, goals)

    def _transact(self, what: str, fn: Callable[[], T]) -> T:
        """Runs one bus transaction with retries; counts every failure; enters the safe state
        after `max_failures` failed transactions in a row."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            self._counts["transactions"] += 1
            if attempt:
                self._counts["retries"] += 1
            try:
                self._counts["stale_bytes"] += self.bus.clear()
                result = fn()
            except SyncReadError as exc:
                unexplained = len(exc.missing) - exc.corrupt - len(exc.wrong_ids)
                self._counts["timeouts"] += max(0, unexplained)
                self._counts["checksum_errors"] += exc.corrupt
                self._counts["wrong_ids"] += len(exc.wrong_ids)
                last = exc
                if unexplained > 0:
                    self._counts["stale_bytes"] += self.bus.drain(self._timeout_s)
            except BusTimeout as exc:
                self._counts["timeouts"] += 1
                last = exc
                self._counts["stale_bytes"] += self.bus.drain(self._timeout_s)
            except BusCorrupt as exc:
                self._counts["checksum_errors"] += 1
                last = exc
            except BusWrongId as exc:
                self._counts["wrong_ids"] += 1
                last = exc
            except OSError as exc:
                self._counts["io_errors"] += 1
                self._link_failed = True
                last = exc
            else:
                self._consecutive = 0
                self._last_traffic = time.monotonic()
                return result
        self._counts["failed_transactions"] += 1
        self._consecutive += 1
        message = f"{what} failed after {self.retries + 1} attempts: {last}"
        if self._consecutive >= self.max_failures and self._faulted is None:
            self._enter_safe_state(
                f"{self._consecutive} failed transactions in a row; last: {message}"
            )
        if self._faulted is not None:
            raise ArmFaulted(self._faulted) from last
        raise BusError(message) from last

    def _enter_safe_state(self, reason: str) -> None:
        self._faulted = reason
        self._counts["safe_state_entries"] += 1
        log.error("servo bus arm in safe state: %s", reason)
        self._torque_off_best_effort()

    def _torque_off_best_effort(self) -> None:
        """One broadcast packet, no reply awaited: reaches every servo that still listens."""
        try:
            self.bus.sync_write(self.family.torque_address, 1, dict.fromkeys(self.ids, b"\x00"))
        except OSError:
            self._counts["io_errors"] += 1
            self._link_failed = True
        self._torque = False

    def _refuse_if_faulted(self, what: str) -> None:
        if self._faulted is not None:
            raise ArmFaulted(f"{what} refused, arm in safe state until rearm(): {self._faulted}")

    def _check_watchdog(self) -> None:
        """After host silence longer than the watchdog, ask the servos whether it fired."""
        silent = time.monotonic() - self._last_traffic
        # Half the setting: the servo's timer runs from when it got our packet, a bit earlier.
        if not (self._torque and self.watchdog_s > 0 and silent > 0.5 * self.watchdog_s):
            return
        address = self.family.watchdog_address
        assert address is not None
        replies = self._transact("watchdog", lambda: self.bus.sync_read(self.ids, address, 1))
        fired = [k for k, j in enumerate(self.joints) if replies[j.servo_id].data[0] == 0xFF]
        if fired:
            for k in fired:
                self._errors[self._spec.joint_names[k]].add("bus_watchdog")
            self._enter_safe_state(f"bus watchdog fired after {silent:.3f} s of host silence")
            raise ArmFaulted(self._faulted)

    def _note_errors(self, servo_id: int, error: int) -> None:
        """Records the decoded error bits of one status packet against its joint."""
        if not error:
            return
        self._counts["servo_error_replies"] += 1
        k = self.ids.index(servo_id)
        name = self._spec.joint_names[k]
        known = self._errors[name]
        names = set(self.family.error_names(error))
        address = self.family.hardware_error_address
        if self.family.needs_hardware_status(error) and address is not None:
            hardware = {n for n in known if n.startswith("hw:")}
            if not hardware:  # read why once per alert, not on every reply
                try:
                    reply = self.bus.read(servo_id, address, 1)
                    names |= {f"hw:{n}" for n in self.family.hardware_error_names(reply.data[0])}
                except BusError:
                    pass  # the alert itself is recorded; the next reply tries again
        new = names - known
        if new:
            log.warning("servo %d (%s) reports %s", servo_id, name, ", ".join(sorted(new)))
        known |= names
