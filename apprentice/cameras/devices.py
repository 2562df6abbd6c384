"""What is plugged in: serial ports (servo buses), V4L2 cameras and RealSense cameras.

list_devices() returns the data; format_devices() prints it for `apprentice list-devices`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from serial.tools import list_ports

# VIDIOC_QUERYCAP = _IOR('V', 0, struct v4l2_capability), the struct being 104 bytes:
# driver[16] card[32] bus_info[32] version capabilities device_caps reserved[3] (u32 each).
VIDIOC_QUERYCAP = (2 << 30) | (104 << 16) | (ord("V") << 8) | 0
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_DEVICE_CAPS = 0x80000000


@dataclass(frozen=True)
class SerialPort:
    device: str  # /dev/ttyUSB0, /dev/ttyACM0, ...
    description: str
    vid: int | None  # USB vendor id
    pid: int | None
    serial_number: str | None  # the adapter's serial, stable across replugging
    by_id: str | None  # /dev/serial/by-id/... link: a name that survives replugging


@dataclass(frozen=True)
class VideoDevice:
    device: str  # /dev/videoN
    name: str  # what the driver calls it (sysfs)
    driver: str  # "uvcvideo" for UVC webcams; "" when it could not be asked
    capture: bool | None  # delivers frames (UVC cameras also make a metadata-only node)
    by_id: str | None  # /dev/v4l/by-id/... link


@dataclass(frozen=True)
class RealSenseDevice:
    serial: str
    name: str
    firmware: str
    usb: str  # "3.2", "2.1": a RealSense on USB 2 is limited to low resolutions and rates


@dataclass(frozen=True)
class Devices:
    serial_ports: list[SerialPort]
    video: list[VideoDevice]
    realsense: list[RealSenseDevice]
    realsense_error: str | None  # why RealSense cameras could not be listed (SDK absent)


def _links(folder: Path) -> dict[str, str]:
    """Stable symlinks in `folder`, by the device they point to."""
    if not folder.is_dir():
        return {}
    return {str(p.resolve()): str(p) for p in sorted(folder.iterdir()) if p.is_symlink()}


def list_serial_ports(dev: Path = Path("/dev")) -> list[SerialPort]:
    by_id = _links(dev / "serial" / "by-id")
    return [
        SerialPort(
            p.device,
            p.description,
            p.vid,
            p.pid,
            p.serial_number,
            by_id.get(str(Path(p.device).resolve())),
        )
        for p in sorted(list_ports.comports(), key=lambda p: p.device)
    ]


def query_v4l2(device: str) -> tuple[str, bool] | None:
    """(driver, can capture) from VIDIOC_QUERYCAP, or None where the node cannot be asked."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        buf = fcntl.ioctl(fd, VIDIOC_QUERYCAP, bytes(104))
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):  # not a V4L2 node
            return None
        raise
    finally:
        os.close(fd)
    driver = buf[:16].split(b"\0", 1)[0].decode(errors="replace")
    caps, device_caps = struct.unpack_from("<II", buf, 84)
    if caps & V4L2_CAP_DEVICE_CAPS:
        caps = device_caps  # this node's own capabilities, not the whole device's
    return driver, bool(caps & V4L2_CAP_VIDEO_CAPTURE)


def list_video_devices(dev: Path = Path("/dev"), sysfs: Path = Path("/sys")) -> list[VideoDevice]:
    by_id = _links(dev / "v4l" / "by-id")
    out = []
    nodes = sorted(dev.glob("video[0-9]*"), key=lambda p: int(p.name[5:]))
    for node in nodes:
        name_file = sysfs / "class" / "video4linux" / node.name / "name"
        name = name_file.read_text().strip() if name_file.is_file() else ""
        caps = query_v4l2(str(node))
        driver, capture = caps if caps is not None else ("", None)
        out.append(VideoDevice(str(node), name, driver, capture, by_id.get(str(node.resolve()))))
    return out


def list_realsense() -> tuple[list[RealSenseDevice], str | None]:
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        return [], f"pyrealsense2 not installed ({exc})"
    found = []
    for d in rs.context().query_devices():

        def info(key: rs.camera_info, d: rs.device = d) -> str:
            return d.get_info(key) if d.supports(key) else ""

        found.append(
            RealSenseDevice(
                info(rs.camera_info.serial_number),
                info(rs.camera_info.name),
                info(rs.camera_info.firmware_version),
                info(rs.camera_info.usb_type_descriptor),
            )
        )
    return found, None


def list_devices() -> Devices:
    realsense, why = list_realsense()
    return Devices(list_serial_ports(), list_video_devices(), realsense, why)


def format_devices(d: Devices) -> str:
    lines = ["Serial ports (servo buses):"]
    for p in d.serial_ports:
        usb = f" usb {p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else ""
        serial = f" serial {p.serial_number}" if p.serial_number else ""
        lines.append(f"  {p.device}  {p.description}{usb}{serial}")
        if p.by_id:
            lines.append(f"    stable name: {p.by_id}")
    if not d.serial_ports:
        lines.append("  none")
    lines.append("Cameras (V4L2, backend uvc):")
    for v in d.video:
        role = {True: "capture", False: "no capture (metadata node)", None: "not queryable"}
        lines.append(f"  {v.device}  {v.name or '?'}  {v.driver or '?'}  {role[v.capture]}")
        if v.by_id:
            lines.append(f"    stable name: {v.by_id}")
    if not d.video:
        lines.append("  none")
    lines.append("RealSense cameras (backend realsense, device = serial):")
    for r in d.realsense:
        lines.append(f"  {r.serial}  {r.name}  firmware {r.firmware}  USB {r.usb}")
    if d.realsense_error:
        lines.append(f"  unavailable: {d.realsense_error}")
    elif not d.realsense:
        lines.append("  none")
    return "\n".join(lines)
