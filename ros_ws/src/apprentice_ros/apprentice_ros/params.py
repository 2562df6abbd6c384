"""Typed ROS parameters with defaults, declared in one call."""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node


def declare(node: Node, defaults: dict[str, Any]) -> dict[str, Any]:
    """Declares every parameter with its default (whose type fixes the parameter's type)."""
    values = {}
    for name, default in defaults.items():
        node.declare_parameter(name, default, ParameterDescriptor(name=name))
        values[name] = node.get_parameter(name).value
    return values
