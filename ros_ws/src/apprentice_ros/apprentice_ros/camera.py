"""Camera node: any Camera backend on ROS 2.

Topics (relative: put the node in the camera's namespace, e.g. /cameras/top):
  image_raw             sensor_msgs/Image            rgb8, header stamp = capture time
  image_raw/compressed  sensor_msgs/CompressedImage  JPEG (image_transport naming)
  camera_info           sensor_msgs/CameraInfo       intrinsics, same stamp as the image
The backend sets the rate (read() blocks until its next frame); a dedicated thread publishes.
"""

from __future__ import annotations

import threading

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from apprentice.robot_io import Camera
from apprentice_ros import conversions
from apprentice_ros.params import declare
from apprentice_ros.runtime import init, spin_nodes

# RELIABLE with a short history: with the shared-memory transport nothing is lost between
# processes (docs/BENCHMARKS.md), and a slow subscriber gets recent frames, not a backlog.
IMAGE_QOS = QoSProfile(depth=5)


class CameraNode(Node):
    def __init__(
        self,
        camera: Camera,
        name: str,
        namespace: str,
        raw: bool = True,
        compressed: bool = True,
        jpeg_quality: int = 90,
    ) -> None:
        super().__init__(name, namespace=namespace)
        self.camera = camera
        self.frame_id = f"{camera.spec.name}_optical_frame"
        self.jpeg_quality = jpeg_quality
        self._raw = self.create_publisher(Image, "image_raw", IMAGE_QOS) if raw else None
        self._jpeg = (
            self.create_publisher(CompressedImage, "image_raw/compressed", IMAGE_QOS)
            if compressed
            else None
        )
        self._info = self.create_publisher(CameraInfo, "camera_info", IMAGE_QOS)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-frames")
        self._thread.start()
        s = camera.spec
        self.get_logger().info(f"camera {s.name} {s.width}x{s.height}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.camera.read(timeout=1.0)
            except Exception as exc:  # a camera hiccup must not kill the node
                self.errors += 1
                self.get_logger().error(f"read failed: {exc}", throttle_duration_sec=1.0)
                continue
            if self._raw is not None:
                self._raw.publish(conversions.image(frame, self.frame_id))
            if self._jpeg is not None:
                self._jpeg.publish(
                    conversions.compressed_image(frame, self.frame_id, self.jpeg_quality)
                )
            self._info.publish(
                conversions.camera_info(self.camera.spec, frame.stamp, self.frame_id)
            )
        self.camera.close()  # on this thread: a GL context must be freed where it was made

    def destroy_node(self) -> None:
        self._stop.set()
        self._thread.join()
        super().destroy_node()


DEFAULTS = {
    "backend": "uvc",  # uvc | realsense (apprentice.cameras.BACKENDS)
    # uvc: /dev/videoN, /dev/v4l/by-id/... or a video file; realsense: serial ("" = first),
    # or a .db3/.bag recording
    "device": "/dev/video0",
    "name": "camera",  # camera name: frame_id <name>_optical_frame
    "namespace": "",  # "" = cameras/<name>
    "width": 640,
    "height": 480,
    "fps": 30.0,
    "camera_info_file": "",  # CameraInfo YAML from apprentice.calibration; "" = backend's own
    "jpeg_quality": 90,
    "publish_raw": True,
    "publish_compressed": True,
    "exposure_ms": -1.0,  # uvc: manual exposure (ms); <= 0 = auto
    "depth": False,  # realsense: stream depth aligned to color (not published yet)
}


def main(args: list[str] | None = None) -> None:
    from apprentice.calibration.camera import read_camera_info
    from apprentice.cameras import open_camera

    init(args)
    boot = Node("camera_params")
    p = declare(boot, DEFAULTS)
    boot.destroy_node()
    options: dict[str, object] = {}
    if p["backend"] == "uvc" and p["exposure_ms"] > 0:
        options["exposure_ms"] = p["exposure_ms"]
    if p["backend"] == "realsense":
        options["depth"] = p["depth"]
    try:
        calibration = read_camera_info(p["camera_info_file"]) if p["camera_info_file"] else None
        camera = open_camera(
            p["backend"],
            p["device"],
            p["name"],
            p["width"],
            p["height"],
            p["fps"],
            calibration,
            **options,
        )
    except (OSError, ValueError, RuntimeError) as exc:  # no such camera, bad file: a message
        rclpy.shutdown()
        raise SystemExit(f"camera {p['name']}: {exc}") from exc
    node = CameraNode(
        camera,
        "camera",
        p["namespace"] or f"cameras/{p['name']}",
        raw=p["publish_raw"],
        compressed=p["publish_compressed"],
        jpeg_quality=p["jpeg_quality"],
    )
    if calibration is None and p["backend"] == "uvc":
        node.get_logger().warning("no camera_info_file: camera_info holds nominal intrinsics")
    # What each counter means; a camera has those its backend keeps. Counts from before the
    # node started do not count.
    losses = {
        "dropped": "frame(s) dropped: the publisher fell behind (JPEG encoding, a loaded host)",
        "lost_upstream": "frame(s) the device numbered but never handed over (USB, syncer)",
        "unpaired": "frameset(s) with color or depth missing its partner, not published",
    }
    seen = {k: getattr(camera, k) for k in losses if hasattr(camera, k)}

    def report_drops() -> None:
        for k, before in seen.items():
            now = getattr(camera, k)
            if now > before:
                node.get_logger().warning(f"{now - before} {losses[k]} in the last second")
            seen[k] = now

    node.create_timer(1.0, report_drops)
    spin_nodes([node])


if __name__ == "__main__":
    main()
