"""A recording session against a running robot + teleop + recorder graph.

python -m apprentice_ros.record_session --episodes N [--scripted] [--interactive]

--scripted: for each episode, reset the simulator (/sim/reset), start recording, play the
  scripted demonstrator as the *leader arm* (it publishes /leader/<arm>/joint_states, exactly
  what a leader arm driver publishes, so the demonstration goes through teleop → follower →
  recorder like a person's), stop recording, and read /sim/success.
--interactive: a terminal loop; keys: s start, k stop and keep, d discard, q quit. A person
  moves the leader arm meanwhile, and sees the episode's time and every stream's live rate
  (a stream under half its nominal rate is marked LOW); each kept episode's quality verdict.
Prints one row per episode and a summary table; --json writes the rows (scripted: after every
episode).

A recorder that dies: `apprentice record` starts a new one and sends this process SIGUSR1.
A recorder call in flight is given up at once (the dead process will never answer), the episode
it was recording is reported lost (scripted: a LOST row; interactive: one line, and k/d do not
act on another episode), and the next call waits until the new recorder answers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time

import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from apprentice.recording.monitor import LiveRates, status_line
from apprentice.timing import RateLoop
from apprentice_ros.conversions import to_time
from apprentice_ros.runtime import CallAborted, call_trigger, init

LEADER_RATE_HZ = 100.0  # what a leader arm driver publishes
SETTLE_S = 0.5  # after a reset, objects drop onto the table
HOLD_S = 0.5  # after the last waypoint, before the episode stops
RECORDER_RESTART_S = 60.0  # s for a (re)started recorder to answer


class RecorderLost(RuntimeError):
    """The recorder died (and was restarted) during an episode or a call to it."""

    def __init__(self, episode: str | None) -> None:
        super().__init__(f"the recorder died{f' while recording {episode}' if episode else ''}")
        self.episode = episode


class Session(Node):
    def __init__(self) -> None:
        super().__init__("record_session")
        self.trigger_clients = {
            name: self.create_client(Trigger, srv)
            for name, srv in (
                ("reset", "/sim/reset"),
                ("start", "/recorder/start"),
                ("stop", "/recorder/stop"),
                ("discard", "/recorder/discard"),
                ("status", "/recorder/status"),
            )
        }
        self.success = False
        self.create_subscription(Bool, "/sim/success", self._on_success, 10)
        self.recorder_params = AsyncParameterClient(self, "/recorder")
        self._leader_pubs: dict[str, object] = {}
        # Recorder restarts signalled so far (SIGUSR1, see the module doc), the number the
        # recorder last answered after (None: never yet), and an event set by each (it ends a
        # scripted demo).
        self.restarts = 0
        self._answered_after: int | None = None
        self.restarted = threading.Event()

    def on_recorder_restart(self, _signum: int, _frame: object) -> None:
        self.restarts += 1
        self.restarted.set()

    def _on_success(self, msg: Bool) -> None:
        self.success = msg.data

    def call(self, name: str, timeout: float = 30.0) -> dict:
        """Calls a Trigger service; for the recorder's, RecorderLost when it dies meanwhile."""
        client = self.trigger_clients[name]
        if name == "reset":
            # Asked again after 10 s: a reply can be lost on first contact while discovery
            # lags (a CI run's scripted session exited ~33 s in, before its first episode).
            # A second reset only moves on to the next seed; the episode records the seed the
            # sim reports.
            for attempt in range(3):
                try:
                    ok, message = call_trigger(client, timeout / 3)
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
        else:
            self.wait_for_recorder()
            restarts = self.restarts
            try:
                ok, message = call_trigger(client, timeout, lambda: self.restarts != restarts)
            except CallAborted:
                raise RecorderLost(None) from None
        info = json.loads(message) if message.startswith("{") else {"message": message}
        if not ok:
            raise RuntimeError(f"{client.srv_name}: {info}")
        return info

    def wait_for_recorder(self) -> None:
        """At the start and after a restart, until the recorder answers its status service,
        asking every 2 s: a request sent before the recorder is up, or before its reply path
        is matched (discovery lags on a loaded host; seen in CI: one request unanswered for
        60 s), is never answered, so one call would wait out its whole timeout."""
        end = time.monotonic() + RECORDER_RESTART_S
        while self._answered_after != (restarts := self.restarts):
            try:
                call_trigger(self.trigger_clients["status"], 2.0)
            except RuntimeError:
                if time.monotonic() > end:
                    what = "restarted recorder" if restarts else "recorder"
                    raise RuntimeError(
                        f"the {what} did not answer within {RECORDER_RESTART_S:g} s"
                    ) from None
                continue
            self._answered_after = restarts

    def set_episode_info(self, info: dict[str, object], timeout: float = 10.0) -> None:
        """Metadata for the next episode's bag (custom_data), via the recorder's parameters."""
        self.wait_for_recorder()
        restarts = self.restarts
        if not self.recorder_params.wait_for_services(timeout_sec=timeout):
            raise RuntimeError("the recorder's parameter services are not available")
        future = self.recorder_params.set_parameters(
            [Parameter("episode_info", value=json.dumps(info))]
        )
        end = time.monotonic() + timeout
        while not future.done():
            if self.restarts != restarts:
                raise RecorderLost(None)
            if time.monotonic() > end:
                raise RuntimeError("setting the recorder's episode_info timed out")
            time.sleep(0.01)

    def leader_pub(self, arm: str):
        if arm not in self._leader_pubs:
            self._leader_pubs[arm] = self.create_publisher(
                JointState, f"/leader/{arm}/joint_states", 10
            )
        return self._leader_pubs[arm]

    def play(self, demo, stop: threading.Event) -> None:
        """Publishes the demonstrator's joint targets as leader joint states, in real time."""
        t0 = time.monotonic()
        for _ in RateLoop(LEADER_RATE_HZ, stop):
            t = time.monotonic() - t0
            if t > demo.duration + HOLD_S:
                return
            stamp = to_time(time.time())
            for arm, q in demo.joint_targets(min(t, demo.duration)).items():
                msg = JointState(name=list(demo.joint_names[arm]), position=q.tolist())
                msg.header.stamp = stamp
                self.leader_pub(arm).publish(msg)


def run_scripted(node: Session, episodes: int, json_path: str | None = None) -> list[dict]:
    """`episodes` demonstrations; one the recorder died in is a LOST row and the session goes
    on with the next (a death before an episode started only delays it). The rows so far are
    written to `json_path` after each episode."""
    from apprentice.teleop.scripted import ScriptedDemo

    rows = []
    while len(rows) < episodes:
        sim = node.call("reset")
        demo = ScriptedDemo(sim["scene"], sim["seed"])
        time.sleep(SETTLE_S)
        node.success = False
        try:
            row = scripted_episode(node, demo, sim)
        except RecorderLost as exc:
            if exc.episode is None:
                print(f"[{len(rows) + 1}/{episodes}] {exc}; starting again", flush=True)
                continue
            lost = {"quality": "LOST: the recorder died", "duration_s": 0.0, "messages": 0}
            row = {"episode": exc.episode, "seed": sim["seed"], "success": False, **lost}
        rows.append(row)
        print(f"[{len(rows)}/{episodes}] " + json.dumps(row), flush=True)
        if json_path:
            write_rows(rows, json_path)
    return rows


def write_rows(rows: list[dict], path: str) -> None:
    """Through a temporary file and a rename: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(rows, f, indent=2)
    os.replace(tmp, path)


def scripted_episode(node: Session, demo, sim: dict) -> dict:
    """One recorded demonstration; RecorderLost if the recorder dies during it."""
    node.set_episode_info({"scene": sim["scene"], "seed": sim["seed"], "source": "scripted"})
    restarts = node.restarts
    node.restarted.clear()
    episode = node.call("start")["episode"]
    node.play(demo, node.restarted)  # a recorder that dies ends the demonstration at once
    time.sleep(0.2)  # the last /sim/success message (10 Hz)
    success = node.success
    try:
        if node.restarts != restarts:
            raise RecorderLost(None)
        result = node.call("stop")
    except RecorderLost:
        raise RecorderLost(episode) from None
    return {
        "episode": result["episode"],
        "seed": sim["seed"],
        "success": success,
        "quality": "ok" if result["passed"] else "; ".join(result["reasons"]),
        "duration_s": round(result["duration_s"], 2),
        "messages": sum(result["counts"].values()),
    }


def _keys():
    """Single key presses on a terminal (no Enter needed); lines when stdin is a pipe."""
    if not sys.stdin.isatty():
        for line in sys.stdin:
            yield line.strip()[:1].lower()
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        while key := sys.stdin.read(1):
            yield key.lower()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class StatusDisplay:
    """A thread that shows the recorder's status: redrawn in place on a terminal, one line
    every `interval` s otherwise (a log, a pipe)."""

    def __init__(self, node: Session, interval: float, tty: bool) -> None:
        self.node, self.interval, self.tty = node, interval, tty
        self.rates = LiveRates()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def say(self, text: str) -> None:
        """A message on its own line (the status line is redrawn below it)."""
        with self._lock:
            print(("\r\x1b[K" if self.tty else "") + text, flush=True)

    def _run(self) -> None:
        restarts = self.node.restarts
        failing = False
        while not self._stop.wait(self.interval):
            try:  # not node.call(): while a restarted recorder comes up, this shows it failing
                ok, message = call_trigger(self.node.trigger_clients["status"], 2.0)
                status = json.loads(message)
            except RuntimeError as exc:
                if not failing:  # once, until it answers again
                    self.say(f"recorder status: {exc}")
                failing = True
                continue
            failing = False
            if restarts != self.node.restarts:  # a new recorder counts from 0
                restarts = self.node.restarts
                self.rates = LiveRates()
            width = shutil.get_terminal_size().columns - 1 if self.tty else None
            line = status_line(status, self.rates.update(time.monotonic(), status["seen"]), width)
            with self._lock:
                if self.tty:
                    print("\r\x1b[K" + line, end="", flush=True)
                else:
                    print(line, flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.tty:
            print(flush=True)


def run_interactive(node: Session, interval: float | None = None) -> list[dict]:
    tty = sys.stdout.isatty()
    node.wait_for_recorder()  # asks its status until it answers
    display = StatusDisplay(node, interval or (0.5 if tty else 2.0), tty)
    rows: list[dict] = []
    display.say("ready; keys: s start, k stop and keep, d discard, q quit")
    display.start()
    recording: str | None = None  # the episode this session started and has not ended
    restarts = node.restarts

    def lost() -> None:
        nonlocal recording, restarts
        restarts = node.restarts
        what = f"{recording} was lost with the recorder" if recording else "the recorder died"
        display.say(f"{what}; s starts a new episode")
        recording = None

    try:
        for key in _keys():
            if restarts != node.restarts:  # the recorder died since the last key
                was_recording = recording is not None
                lost()
                if was_recording and key in ("k", "d"):  # meant for the lost episode
                    continue
            try:
                if key == "s":
                    recording = node.call("start")["episode"]
                    display.say(f"recording {recording}")
                elif key == "k":
                    r = node.call("stop")
                    recording = None
                    verdict = "ok" if r["passed"] else "FLAGGED: " + "; ".join(r["reasons"])
                    rows.append(
                        {
                            "episode": r["episode"],
                            "quality": verdict,
                            "duration_s": round(r["duration_s"], 2),
                        }
                    )
                    display.say(f"kept {r['episode']} ({r['duration_s']:.1f} s): {verdict}")
                elif key == "d":
                    display.say(f"discarded {node.call('discard')['episode']}")
                    recording = None
                elif key == "q":
                    break
            except RecorderLost:
                lost()
            except RuntimeError as exc:
                display.say(f"error: {exc}")
    finally:
        display.stop()
    return rows


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols))
    if "success" in cols:
        ok = sum(bool(r["success"]) for r in rows)
        print(
            f"success {ok}/{len(rows)}; quality ok "
            f"{sum(r['quality'] == 'ok' for r in rows)}/{len(rows)}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--scripted", action="store_true")
    mode.add_argument("--interactive", action="store_true")
    ap.add_argument("--episodes", type=int, default=1)
    ap.add_argument("--json", help="write the per-episode rows here")
    ap.add_argument(
        "--status-interval",
        type=float,
        help="s between status lines (interactive; 0.5 on a terminal, 2 otherwise)",
    )
    a = ap.parse_args(argv)
    init()  # our SIGINT / SIGTERM handler (not rclpy's): KeyboardInterrupt here, context kept
    node = Session()
    signal.signal(signal.SIGUSR1, node.on_recorder_restart)
    spinner = threading.Thread(target=_spin, args=(node,), daemon=True)
    spinner.start()
    try:
        if a.scripted:
            rows = run_scripted(node, a.episodes, a.json)
        else:
            rows = run_interactive(node, a.status_interval)
    except RuntimeError as exc:  # a service that is not there or did not answer
        print(f"record_session: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        rclpy.try_shutdown()  # Ctrl-C may have shut the context down already
        spinner.join(timeout=5)
        node.destroy_node()
    print_table(rows)
    if a.json:
        write_rows(rows, a.json)
    return 0


def _spin(node: Node) -> None:
    try:
        rclpy.spin(node)
    except Exception:  # rclpy.shutdown() from the main thread ends the spin
        pass


if __name__ == "__main__":
    sys.exit(main())
