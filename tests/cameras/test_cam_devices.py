"""list-devices: serial ports, V4L2 nodes and RealSense cameras.

This machine has no camera: the V4L2 listing is checked on a /dev + /sys tree laid out as
the kernel does it (nodes, sysfs names, by-id links), and against real non-V4L2 devices.
"""

from __future__ import annotations

import glob
import os

from apprentice.cameras.devices import (
    Devices,
    format_devices,
    list_devices,
    list_video_devices,
    query_v4l2,
)


def test_video_nodes_names_and_stable_links(tmp_path) -> None:
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    (dev / "v4l" / "by-id").mkdir(parents=True)
    for i, name in ((0, "HD Pro Webcam C920"), (1, "HD Pro Webcam C920"), (10, "Arducam")):
        (dev / f"video{i}").write_bytes(b"")
        folder = sysfs / "class" / "video4linux" / f"video{i}"
        folder.mkdir(parents=True)
        (folder / "name").write_text(name + "\n")
    link = dev / "v4l" / "by-id" / "usb-046d_HD_Pro_Webcam_C920_ABC123-video-index0"
    link.symlink_to(dev / "video0")
    found = list_video_devices(dev, sysfs)
    assert [v.device for v in found] == [str(dev / f"video{i}") for i in (0, 1, 10)]  # numeric
    assert found[0].name == "HD Pro Webcam C920" and found[2].name == "Arducam"
    assert found[0].by_id == str(link) and found[1].by_id is None
    assert all(v.capture is None and v.driver == "" for v in found)  # plain files: no ioctl
    text = format_devices(Devices([], found, [], None))
    assert "HD Pro Webcam C920" in text and str(link) in text and "not queryable" in text


def test_querycap_refuses_devices_that_are_not_v4l2() -> None:
    assert query_v4l2(os.devnull) is None  # a character device without VIDIOC_QUERYCAP
    assert query_v4l2("/no/such/video0") is None


def test_listing_this_machine() -> None:
    d = list_devices()
    text = format_devices(d)
    assert text.startswith("Serial ports (servo buses):")
    for port in d.serial_ports:
        assert port.device in text
    try:
        import pyrealsense2  # noqa: F401
    except ImportError:
        assert d.realsense_error and "pyrealsense2" in d.realsense_error
    else:
        assert d.realsense_error is None
    assert sorted(v.device for v in d.video) == sorted(glob.glob("/dev/video[0-9]*"))
