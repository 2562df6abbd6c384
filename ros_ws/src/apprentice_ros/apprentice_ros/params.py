"""Typed ROS parameters with defaults, declared in one call."""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node


def declare(node: Node, defaults: dict[str, Any], dynamic: tuple[str, ...] = ()) -> dict[str, Any]:
    """Declares every parameter with its default (whose type fixes the parameter's type).
    Names in `dynamic` take a value of any type (the caller checks it): for a number that may
    come as 2 or 2.0, or a list whose default is empty (an empty list has no ROS type)."""
    values = {}
    for name, default in defaults.items():
        if name in dynamic:
            node.declare_parameter(name, None, ParameterDescriptor(name=name, dynamic_typing=True))
            value = node.get_parameter(name).value
            values[name] = default if value is None else value
            continue
        node.declare_parameter(name, default, ParameterDescriptor(name=name))
        values[name] = node.get_parameter(name).value
    return values
