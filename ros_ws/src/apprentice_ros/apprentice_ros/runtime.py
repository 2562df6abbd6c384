"""Process lifecycle for our executables: init, spin, and an orderly shutdown.

rclpy's own signal handler invalidates the context the moment SIGINT arrives, while our
publisher threads may still be publishing ("publisher's context is invalid"). We take SIGINT
and SIGTERM ourselves instead: the executor stops, each node stops its threads, then the
context goes. While spinning, a signal only sets a flag that the spin loop checks every 0.1 s:
an exception raised by the handler inside an rclpy call (taking a message) surfaces as a
RuntimeError from pybind11, not a KeyboardInterrupt, and the process would exit 1. Before
spinning (start-up), a signal raises KeyboardInterrupt as usual.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import rclpy
from rclpy.client import Client
from rclpy.executors import Executor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from std_srvs.srv import Trigger


class CallAborted(RuntimeError):
    """A service call given up on before its timeout (`abort` said so)."""


def call_trigger(
    client: Client, timeout: float = 30.0, abort: Callable[[], bool] | None = None
) -> tuple[bool, str]:
    """Calls a std_srvs/Trigger service from a thread other than the one spinning the node.
    abort: polled while waiting for the answer; true gives up at once (CallAborted), e.g.
    when the server is known to have died."""
    if not client.wait_for_service(timeout_sec=timeout):
        raise RuntimeError(f"service {client.srv_name} is not available")
    future = client.call_async(Trigger.Request())
    end = time.monotonic() + timeout
    while not future.done():
        if abort is not None and abort():
            client.remove_pending_request(future)
            raise CallAborted(f"service {client.srv_name}: call abandoned")
        if time.monotonic() > end:
            client.remove_pending_request(future)
            raise RuntimeError(f"service {client.srv_name} did not answer")
        time.sleep(0.01)
    res = future.result()
    return res.success, res.message


_stop_requested = threading.Event()
_spinning = threading.Event()


def _on_signal(_signum, _frame) -> None:
    _stop_requested.set()
    if not _spinning.is_set():
        raise KeyboardInterrupt


def init(args: list[str] | None = None) -> None:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def spin_nodes(
    nodes: list[Node],
    on_exit: Callable[[], None] | None = None,
    executor: Executor | None = None,
) -> None:
    """Spins nodes until Ctrl-C / SIGTERM, then shuts everything down in order: executor,
    nodes (each stops its threads), on_exit, context."""
    # Single-threaded by default: every callback here is short, and rclpy's multi-threaded
    # executor costs about twice the CPU per message. Time-critical loops have threads of
    # their own.
    executor = executor or SingleThreadedExecutor()
    for node in nodes:
        executor.add_node(node)
    _spinning.set()
    try:
        # spin_once with a timeout, not spin(): the executor waits in C, and Python runs our
        # SIGINT/SIGTERM handler only when it returns; a node with no timers would never stop.
        while rclpy.ok() and not _stop_requested.is_set():
            executor.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:  # a signal that came before _spinning was set
        pass
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        if on_exit is not None:
            on_exit()
        if rclpy.ok():
            rclpy.shutdown()
