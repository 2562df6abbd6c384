"""Which recorded topics become the state, the action and the camera images of a dataset.

A YAML file (all keys but `state`, `action` and `cameras` optional):

    control_rate_hz: 50          # the grid every stream is resampled onto (Hz)
    image_hw: [96, 128]          # (H, W) pixels every camera is resized to
    val_fraction: 0.1            # episodes held out for validation (split BY episode)
    split_seed: 0
    trim_idle_start: true        # drop the still frames before the first motion (see below)
    image_store: auto            # frames in the cache: raw, jpeg, or auto (raw up to
                                 # 128x160 = 20,480 pixels, JPEG above; image_store.py: why)
    jpeg_quality: 90             # 1-100, for the jpeg store
    idle_threshold: 0.01         # rad or m: an action this far from the first one is motion
    state:
      - topic: /left/joint_states              # sensor_msgs/JointState: `position`, by name
        joints: [left_waist, left_shoulder]    # optional: default all, in the bag's order
        max_age_s: 0.05
    action:
      - topic: /left/commands                  # std_msgs/Float64MultiArray, in joint order...
        names_from: /left/joint_states         # ...of this JointState topic (the default:
                                               #    the sibling `joint_states`)
    cameras:
      - name: top
        topic: /cameras/top/image_raw/compressed   # sensor_msgs/Image or CompressedImage
        max_age_s: 0.1

Max age (s) is how stale the as-of sample of a stream may be at a grid time
(`apprentice.resample`); an older one is an error, not a silently held value. Defaults:
  joint states 0.05 s: 5-10 periods of a 100-200 Hz driver, so jitter and the odd lost message
      pass, but a driver stalled for 2.5 control steps (at 50 Hz) does not;
  commands 0.1 s: teleop publishes at >= 30 Hz, so 3 periods;
  cameras 0.1 s: 3 frame periods at 30 Hz.
The live policy node applies the same rule to its inputs (`AsOfBuffer`).

Idle start: an episode whose first 0.3 s are the arm waiting at its start pose teaches "at the
start pose, wait"; the policy sees the same frame at every step of that wait, so in closed loop
it waits forever (receding horizon) or starts late and slow (temporal ensembling; measured on
the transfer cube: 0.3-0.5 s late along a blurred path, or not at all). The builder drops those
frames (builder.idle_start_steps).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

STATE_MAX_AGE_S = 0.05
ACTION_MAX_AGE_S = 0.1
CAMERA_MAX_AGE_S = 0.1

JOINT_STATE = "sensor_msgs/msg/JointState"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
BOOL = "std_msgs/msg/Bool"
STATE_TYPES = (JOINT_STATE,)
ACTION_TYPES = (FLOAT64_ARRAY, JOINT_STATE)
CAMERA_TYPES = (IMAGE, COMPRESSED_IMAGE)
IMAGE_STORES = ("auto", "raw", "jpeg")


@dataclass(frozen=True)
class JointStream:
    """A joint topic: JointState positions (by name) or a Float64MultiArray (joint order)."""

    topic: str
    joints: tuple[str, ...] | None = None  # None: every joint of the topic, in its order
    # s; the state's default here. `from_json`/`infer_config` give action topics
    # ACTION_MAX_AGE_S unless the YAML says otherwise.
    max_age_s: float = STATE_MAX_AGE_S
    # Float64MultiArray only: the JointState topic whose `name` order the array follows.
    names_from: str | None = None

    def __post_init__(self) -> None:
        if not self.topic.startswith("/"):
            raise ValueError(f"topic must be absolute, got {self.topic!r}")
        if self.joints is not None:
            object.__setattr__(self, "joints", tuple(str(j) for j in self.joints))
            if not self.joints or len(set(self.joints)) != len(self.joints):
                raise ValueError(f"{self.topic}: joints must be distinct and non-empty")
        if not self.max_age_s > 0:
            raise ValueError(f"{self.topic}: max_age_s must be > 0, got {self.max_age_s}")

    @property
    def default_names_from(self) -> str:
        """`/left/commands` → `/left/joint_states`."""
        if self.names_from is not None:
            return self.names_from
        return self.topic.rsplit("/", 1)[0] + "/joint_states"


def camera_info_topic(image_topic: str) -> str:
    """A camera's CameraInfo topic, by the image_transport convention: beside the base image
    topic (`/cameras/top/image_raw[/compressed]` → `/cameras/top/camera_info`)."""
    return image_topic.removesuffix("/compressed").rsplit("/", 1)[0] + "/camera_info"


@dataclass(frozen=True)
class CameraStream:
    name: str
    topic: str
    max_age_s: float = CAMERA_MAX_AGE_S

    def __post_init__(self) -> None:
        if not self.name or not self.topic.startswith("/"):
            raise ValueError(f"camera needs a name and an absolute topic: {self}")
        if not self.max_age_s > 0:
            raise ValueError(f"camera {self.name}: max_age_s must be > 0, got {self.max_age_s}")

    @property
    def info_topic(self) -> str:
        return camera_info_topic(self.topic)


@dataclass(frozen=True)
class DatasetConfig:
    state: tuple[JointStream, ...]
    action: tuple[JointStream, ...]
    cameras: tuple[CameraStream, ...] = ()
    control_rate_hz: float = 50.0
    image_hw: tuple[int, int] = (96, 128)
    val_fraction: float = 0.1
    split_seed: int = 0
    # Drop the still frames an episode opens with, up to the one before the first action
    # that moves a joint by more than idle_threshold (rad or m) from the first action.
    trim_idle_start: bool = True
    idle_threshold: float = 0.01
    # How the cache keeps the frames (apprentice.dataset.image_store): "raw", "jpeg" (at
    # jpeg_quality), or "auto", by frame size. The cache's config records the store chosen.
    image_store: str = "auto"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", tuple(self.state))
        object.__setattr__(self, "action", tuple(self.action))
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "image_hw", tuple(int(v) for v in self.image_hw))
        if not self.state or not self.action:
            raise ValueError("a dataset needs at least one state and one action topic")
        topics = [s.topic for s in (*self.state, *self.action, *self.cameras)]
        if len(set(topics)) != len(topics):
            raise ValueError(f"a topic is listed twice: {topics}")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be distinct: {names}")
        if not self.control_rate_hz > 0:
            raise ValueError(f"control_rate_hz must be > 0, got {self.control_rate_hz}")
        if len(self.image_hw) != 2 or min(self.image_hw) < 8:
            raise ValueError(f"image_hw must be (H, W) >= 8, got {self.image_hw}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.idle_threshold > 0:
            raise ValueError(f"idle_threshold must be > 0, got {self.idle_threshold}")
        if self.image_store not in IMAGE_STORES:
            raise ValueError(f"image_store must be one of {IMAGE_STORES}, got {self.image_store!r}")
        if isinstance(self.jpeg_quality, bool) or self.jpeg_quality not in range(1, 101):
            raise ValueError(f"jpeg_quality must be an integer 1-100, got {self.jpeg_quality!r}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) - known:
            raise ValueError(f"unknown dataset config keys: {sorted(set(data) - known)}")
        for key in ("state", "action", "cameras"):
            if not isinstance(data.get(key, []), list | tuple):
                raise ValueError(f"dataset config: {key} must be a list")
        action_defaults = {"max_age_s": ACTION_MAX_AGE_S}
        data["state"] = tuple(JointStream(**s) for s in data.get("state", []))
        data["action"] = tuple(JointStream(**(action_defaults | a)) for a in data.get("action", []))
        data["cameras"] = tuple(CameraStream(**c) for c in data.get("cameras", []))
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DatasetConfig:
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a dataset config is a YAML mapping")
        try:
            return cls.from_json(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e

    def with_joints(self, resolved: dict[str, tuple[str, ...]]) -> DatasetConfig:
        """The config with every `joints: None` replaced by the names found in the data."""

        def fix(s: JointStream) -> JointStream:
            return s if s.joints is not None else dataclasses.replace(s, joints=resolved[s.topic])

        return dataclasses.replace(
            self, state=tuple(map(fix, self.state)), action=tuple(map(fix, self.action))
        )


def infer_config(topics: dict[str, str], **overrides: Any) -> DatasetConfig:
    """A config from one bag's {topic: type}: every `*/joint_states` is state (but a leader's,
    `/leader/...`: no leader arm is there when the policy runs), its sibling `commands`
    (Float64MultiArray), else `joint_commands` (JointState), is the action, every image topic
    a camera (raw preferred over compressed for the same camera: it is what the sensor gave,
    without JPEG loss)."""
    state = [
        JointStream(t)
        for t, ty in sorted(topics.items())
        if ty == JOINT_STATE and t.endswith("/joint_states") and not t.startswith("/leader/")
    ]
    action = []
    for s in state:
        base = s.topic.rsplit("/", 1)[0]
        if topics.get(base + "/commands") == FLOAT64_ARRAY:
            action.append(JointStream(base + "/commands", max_age_s=ACTION_MAX_AGE_S))
        elif topics.get(base + "/joint_commands") == JOINT_STATE:  # by name (LeRobot imports)
            action.append(JointStream(base + "/joint_commands", max_age_s=ACTION_MAX_AGE_S))
    cameras: dict[str, CameraStream] = {}
    for t, ty in sorted(topics.items()):
        if ty not in CAMERA_TYPES:
            continue
        base = t.removesuffix("/compressed").removesuffix("/image_raw")
        name = base.rsplit("/", 1)[-1] or base
        if name not in cameras or ty == IMAGE:
            cameras[name] = CameraStream(name, t)
    if not state or not action:
        raise ValueError(
            "cannot infer a dataset config: need */joint_states (JointState) with a sibling "
            f"*/commands (Float64MultiArray) or */joint_commands (JointState); the bag has "
            f"{sorted(topics)}"
        )
    return DatasetConfig(state=state, action=action, cameras=tuple(cameras.values()), **overrides)
