"""Thin rclpy nodes over the apprentice core."""
