"""apprentice: teach low-cost robot arms by demonstration on ROS 2.

The core package never imports rclpy; the ROS 2 nodes in ros_ws/src/apprentice_ros wire
parameters, topics and services to it.
"""

__version__ = "0.1.0"
