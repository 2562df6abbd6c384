"""Task success signals, computed from MuJoCo contacts (the ACT paper's staged rewards).

Each task returns a stage in 0..max_stage; the episode succeeds at max_stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mujoco
import numpy as np


@dataclass(frozen=True)
class TaskStatus:
    stage: int
    max_stage: int
    label: str

    @property
    def success(self) -> bool:
        return self.stage >= self.max_stage


class ContactView:
    """Which named groups of geoms touch each other in the current state."""

    def __init__(self, model: mujoco.MjModel, groups: dict[str, set[int]]) -> None:
        self.model = model
        self.groups = groups

    def pairs(self, data: mujoco.MjData) -> set[frozenset[str]]:
        owner: dict[int, str] = {g: name for name, geoms in self.groups.items() for g in geoms}
        touching: set[frozenset[str]] = set()
        for i in range(data.ncon):
            c = data.contact[i]
            a, b = owner.get(int(c.geom1)), owner.get(int(c.geom2))
            if a and b and a != b:
                touching.add(frozenset((a, b)))
        return touching


def subtree_geoms(model: mujoco.MjModel, root_body: str) -> set[int]:
    root = model.body(root_body).id
    bodies = {root}
    for b in range(model.nbody):  # parents come before children in MuJoCo's body order
        if int(model.body_parentid[b]) in bodies and b != 0:
            bodies.add(b)
    return {g for g in range(model.ngeom) if int(model.geom_bodyid[g]) in bodies}


def body_geoms(model: mujoco.MjModel, body: str) -> set[int]:
    bid = model.body(body).id
    return {g for g in range(model.ngeom) if int(model.geom_bodyid[g]) == bid}


def geom_ids(model: mujoco.MjModel, *names: str) -> set[int]:
    return {model.geom(n).id for n in names}


TaskFn = Callable[[mujoco.MjData], TaskStatus]


def transfer_cube(model: mujoco.MjModel, grippers: dict[str, str]) -> TaskFn:
    view = ContactView(
        model,
        {
            "cube": body_geoms(model, "box"),
            "left": subtree_geoms(model, grippers["left"]),
            "right": subtree_geoms(model, grippers["right"]),
            "table": geom_ids(model, "table"),
        },
    )
    labels = ["idle", "right touched", "lifted", "left touched", "transferred"]

    def status(data: mujoco.MjData) -> TaskStatus:
        p = view.pairs(data)
        on_table = frozenset(("cube", "table")) in p
        stage = 0
        if frozenset(("cube", "right")) in p:
            stage = 2 if not on_table else 1
        if frozenset(("cube", "left")) in p:
            stage = 4 if not on_table else 3
        return TaskStatus(stage, 4, labels[stage])

    return status


def insertion(model: mujoco.MjModel, grippers: dict[str, str]) -> TaskFn:
    view = ContactView(
        model,
        {
            "peg": body_geoms(model, "peg"),
            "socket": body_geoms(model, "socket") - geom_ids(model, "pin"),
            "pin": geom_ids(model, "pin"),
            "left": subtree_geoms(model, grippers["left"]),
            "right": subtree_geoms(model, grippers["right"]),
            "table": geom_ids(model, "table"),
        },
    )
    labels = ["idle", "both grasped", "both lifted", "peg in socket", "inserted"]

    def status(data: mujoco.MjData) -> TaskStatus:
        p = view.pairs(data)
        grasped = frozenset(("peg", "right")) in p and (
            frozenset(("socket", "left")) in p or frozenset(("pin", "left")) in p
        )
        peg_down = frozenset(("peg", "table")) in p
        socket_down = frozenset(("socket", "table")) in p or frozenset(("pin", "table")) in p
        stage = 0
        if grasped:
            stage = 1
        if grasped and not peg_down and not socket_down:
            stage = 2
        if frozenset(("peg", "socket")) in p and not peg_down and not socket_down:
            stage = 3
        if frozenset(("peg", "pin")) in p:
            stage = 4
        return TaskStatus(stage, 4, labels[stage])

    return status


def lift(model: mujoco.MjModel, grippers: dict[str, str], height: float = 0.03) -> TaskFn:
    """Single arm: the cube is held by the gripper, off the table, `height` m above its start."""
    (gripper,) = grippers.values()
    view = ContactView(
        model,
        {
            "cube": body_geoms(model, "box"),
            "gripper": subtree_geoms(model, gripper),
            "table": geom_ids(model, "table"),
        },
    )
    box = model.body("box").id
    rest_z = float(model.body_pos[box][2])
    labels = ["idle", "touched", "lifted"]

    def status(data: mujoco.MjData) -> TaskStatus:
        p = view.pairs(data)
        stage = 0
        if frozenset(("cube", "gripper")) in p:
            stage = 1
            off_table = frozenset(("cube", "table")) not in p
            if off_table and data.xpos[box][2] > rest_z + height:
                stage = 2
        return TaskStatus(stage, 2, labels[stage])

    return status


def place(model: mujoco.MjModel, grippers: dict[str, str], height: float = 0.02) -> TaskFn:
    """Single arm, pick and place: the cube lifted `height` m off the table by the gripper,
    then let go of, resting on the table with its centre inside the target square."""
    (gripper,) = grippers.values()
    view = ContactView(
        model,
        {
            "cube": body_geoms(model, "box"),
            "gripper": subtree_geoms(model, gripper),
            "table": geom_ids(model, "table"),
        },
    )
    box, target = model.body("box").id, model.body("target").id
    rest_z = float(model.body_pos[box][2])
    (area,) = body_geoms(model, "target")
    half = model.geom_size[area][:2]  # the square's half sides, m
    labels = ["idle", "touched", "lifted", "placed"]

    def status(data: mujoco.MjData) -> TaskStatus:
        p = view.pairs(data)
        stage = 0
        if frozenset(("cube", "gripper")) in p:
            stage = 1
            if frozenset(("cube", "table")) not in p and data.xpos[box][2] > rest_z + height:
                stage = 2
        elif frozenset(("cube", "table")) in p:
            inside = np.abs(data.xpos[box][:2] - data.xpos[target][:2]) <= half
            stage = 3 if inside.all() else 0
        return TaskStatus(stage, 3, labels[stage])

    return status


TASKS: dict[str, Callable[[mujoco.MjModel, dict[str, str]], TaskFn]] = {
    "transfer_cube": transfer_cube,
    "insertion": insertion,
    "lift": lift,
    "place": place,
}
