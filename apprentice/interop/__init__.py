"""Bridges to other robot-learning ecosystems (plain Python, no rclpy).

LeRobot datasets: `lerobot_format` (the on-disk layout of format v3.0 and v2.1, read and
written with pyarrow; videos with PyAV in `lerobot_video`), `lerobot_import` (a LeRobot dataset
→ one episode bag per episode, as the recorder writes them) and `lerobot_export` (episode bags →
a LeRobot v3.0 dataset). `lerobot_cli` wires them into `apprentice dataset`.
"""
