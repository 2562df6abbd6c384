"""Camera node: any Camera backend on ROS 2.

Topics (relative: put the node in the camera's namespace, e.g. /cameras/top):
  image_raw             sensor_msgs/Image            rgb8, header stamp = capture time
  image_raw/compressed  sensor_msgs/CompressedImage  JPEG (image_transport naming)
  camera_info           sensor_msgs/CameraInfo       intrinsics, same stamp as the image
The backend sets the rate (read() blocks until its next frame); a dedicated thread publishes.
"""

from __future__ import annotations

import threading

from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from apprentice.robot_io import Camera
from apprentice_ros import conversions

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
