"""A MuJoCo world that is a drop-in robot: its arms and cameras implement apprentice.robot_io.

Time: physics steps at `scene.timestep` (500 Hz) on a thread paced to the wall clock (real-time
factor 1). Every stamp is `epoch + sim_time`, where `epoch` is the host time (time.time()) at
which sim time 0 was paced from, so joint states and images carry stamps of the physics state
they show (exactly consistent with each other) and stay within a few ms of wall time. If the
host cannot keep up for more than `max_lag` s, the epoch is shifted forward (counted in
`stats["resyncs"]`): stamps then jump ahead but never go back.
"""

from __future__ import annotations

import os
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen; set MUJOCO_GL=osmesa where EGL is absent
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import cv2  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from apprentice.robot_io import ArmSpec, CameraSpec, Frame, JointReading  # noqa: E402
from apprentice.sim.scenes import SceneDef, assets_dir, get_scene, sample_object_positions  # noqa: E402
from apprentice.sim.tasks import TASKS, TaskStatus  # noqa: E402


def load_model(scene: SceneDef) -> mujoco.MjModel:
    folder = assets_dir(scene.package)
    if scene.inline:
        assets = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        model = mujoco.MjModel.from_xml_string(scene.xml, assets)
    else:
        model = mujoco.MjModel.from_xml_path(str(folder / scene.xml))
    model.opt.timestep = scene.timestep
    dyn = dict(scene.arm_dynamics)
    driven = {int(model.actuator_trnid[a, 0]): a for a in range(model.nu)}
    for arm in scene.arms:
        for joint in arm.mjcf_joints:
            jid = model.joint(joint).id
            dof, act = model.jnt_dofadr[jid], driven[jid]
            if "frictionloss" in dyn:
                model.dof_frictionloss[dof] = dyn["frictionloss"]
            if "damping" in dyn:
                model.dof_damping[dof] = dyn["damping"]
            if "forcerange" in dyn:
                model.actuator_forcerange[act] = (-dyn["forcerange"], dyn["forcerange"])
            if "kp_min" in dyn and model.jnt_type[jid] == mujoco.mjtJoint.mjJNT_HINGE:
                kp = max(float(model.actuator_gainprm[act, 0]), dyn["kp_min"])
                model.actuator_gainprm[act, 0] = kp  # position actuator: kp * (ctrl - q)
                model.actuator_biasprm[act, 1] = -kp
    # Shadows and multisampling cost ~80 % of an offscreen frame on a software rasterizer
    # (62 ms → 12 ms at 480×640 with Mesa llvmpipe) and add nothing a policy needs (anti-aliasing
    # where it matters: MujocoCamera's supersample, +1 ms per 128×96 frame at 2×2).
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 0
    return model


class MujocoWorld:
    """Physics, arms and cameras of one scene. Thread-safe; call start() for real-time pacing."""

    def __init__(self, scene: str | SceneDef, seed: int = 0, max_lag: float = 0.25) -> None:
        self.scene = get_scene(scene) if isinstance(scene, str) else scene
        self.model = load_model(self.scene)
        self.data = mujoco.MjData(self.model)
        self.lock = threading.RLock()
        self._epoch = time.time()  # host time of sim time 0; re-anchored by start()
        self.max_lag = max_lag
        self.stats = {"steps": 0, "resyncs": 0, "divergences": 0}
        grippers = {a.name: a.gripper_body for a in self.scene.arms}
        self._task = TASKS[self.scene.task](self.model, grippers)
        self._arms = {a.name: MujocoArm(self, a.name) for a in self.scene.arms}
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self.seed = seed
        self.reset(seed)

    # --- episode -------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Arms to home, objects to a seeded random pose, sim time kept running (stamps grow)."""
        if seed is not None:
            self.seed = seed
        rng = np.random.default_rng(self.seed)
        with self.lock:
            t = self.data.time
            mujoco.mj_resetData(self.model, self.data)
            self.data.time = t
            for arm in self._arms.values():
                arm.set_home()
            positions = sample_object_positions(self.scene, rng)
            for obj, pos in zip(self.scene.objects, positions, strict=True):
                adr = self.model.jnt_qposadr[self.model.body(obj.body).jntadr[0]]
                self.data.qpos[adr : adr + 3] = pos
                self.data.qpos[adr + 3 : adr + 7] = (1.0, 0.0, 0.0, 0.0)
            mujoco.mj_forward(self.model, self.data)

    def task_status(self) -> TaskStatus:
        with self.lock:
            return self._task(self.data)

    def object_position(self, body: str) -> np.ndarray:
        with self.lock:
            return self.data.xpos[self.model.body(body).id].copy()

    # --- time ----------------------------------------------------------------------------
    @property
    def sim_time(self) -> float:
        return float(self.data.time)

    def stamp(self, sim_time: float) -> float:
        return self._epoch + sim_time

    def step(self, n: int = 1) -> None:
        """Advances physics by n steps (used by the pacing thread and by headless tests)."""
        with self.lock:
            for _ in range(n):
                t = self.data.time
                mujoco.mj_step(self.model, self.data)
                if self.data.time < t:
                    # MuJoCo resets MjData when the physics diverges (its time goes back to 0):
                    # start a fresh episode instead, and keep time (and so stamps) going forward.
                    self.stats["divergences"] += 1
                    self.data.time = t
                    self.reset()
                    self.data.time = t + self.model.opt.timestep
            self.stats["steps"] += n

    def start(self) -> None:
        """Runs physics in real time on a background thread until stop()."""
        if self._thread is not None:
            return
        self._running.set()
        self._thread = threading.Thread(target=self._pace, name="mujoco-physics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _pace(self) -> None:
        dt = self.model.opt.timestep
        mono0 = time.monotonic() - self.data.time
        self._epoch = time.time() - self.data.time
        while self._running.is_set():
            # Under the lock: reset() on another thread zeroes data.time for a moment (it keeps
            # time going by restoring it), and an unlocked read there once looked like a
            # 30 s lag, then like 30 s ahead — and the physics slept for 30 s.
            with self.lock:
                sim_time = self.data.time
            behind = (time.monotonic() - mono0) - sim_time
            if behind > self.max_lag:
                # Too slow to catch up without a burst of physics: skip the lost time.
                mono0 += behind
                self._epoch += behind
                self.stats["resyncs"] += 1
                behind = 0.0
            n = int(behind / dt)
            if n > 0:
                self.step(n)
            time.sleep(min(dt, max(0.0, dt - (behind - n * dt))))  # never more than a step

    # --- devices -------------------------------------------------------------------------
    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(self._arms)

    def arm(self, name: str) -> MujocoArm:
        try:
            return self._arms[name]
        except KeyError:
            raise ValueError(
                f"scene {self.scene.name} has no arm {name!r}; arms: {', '.join(self._arms)}"
            ) from None

    def camera(
        self,
        name: str,
        width: int = 320,
        height: int = 240,
        fps: float = 30.0,
        fovy: float | None = None,
        supersample: int = 1,
    ) -> MujocoCamera:
        """fovy: this reader's lens (vertical field of view, degrees; None: the scene's).
        supersample: render k×k pixels per output pixel and average them (a real sensor
        integrates light over each pixel; without it a small object's position in the image
        moves in whole pixels)."""
        if name not in self.scene.cameras:
            raise ValueError(
                f"scene {self.scene.name} has no camera {name!r}; "
                f"cameras: {', '.join(self.scene.cameras)}"
            )
        return MujocoCamera(self, name, width, height, fps, fovy, supersample)


class MujocoArm:
    """One arm of a MujocoWorld, on the robot I/O contract (apprentice.robot_io.Arm)."""

    def __init__(self, world: MujocoWorld, name: str) -> None:
        self.world = world
        self.defn = next(a for a in world.scene.arms if a.name == name)
        m = world.model
        jids = [m.joint(j).id for j in self.defn.mjcf_joints]
        self._qadr = np.array([m.jnt_qposadr[j] for j in jids])
        self._vadr = np.array([m.jnt_dofadr[j] for j in jids])
        # MJCF actuators may be unnamed (ALOHA): find each by the joint it drives.
        by_joint = {int(m.actuator_trnid[a, 0]): a for a in range(m.nu)}
        self._act = [
            [(by_joint[m.joint(j).id], s) for j, s in acts] for acts in self.defn.actuators
        ]
        lower = np.array([m.jnt_range[j][0] for j in jids])
        upper = np.array([m.jnt_range[j][1] for j in jids])
        self._spec = ArmSpec(self.defn.joints, lower, upper)
        self._kp = {aid: float(m.actuator_gainprm[aid, 0]) for acts in self._act for aid, _ in acts}
        self._torque = True

    @property
    def spec(self) -> ArmSpec:
        return self._spec

    def read(self) -> JointReading:
        w = self.world
        with w.lock:
            d = w.data
            q = d.qpos[self._qadr].copy()
            v = d.qvel[self._vadr].copy()
            e = np.array([d.actuator_force[acts[0][0]] * acts[0][1] for acts in self._act])
            stamp = w.stamp(d.time)
        return JointReading(stamp, q, v, e)

    def write(self, position: np.ndarray) -> None:
        q = np.asarray(position, dtype=float)
        with self.world.lock:
            if not self._torque:
                return
            for value, acts in zip(q, self._act, strict=True):
                for aid, sign in acts:
                    self.world.data.ctrl[aid] = sign * value

    def set_torque(self, enabled: bool) -> None:
        """Off: actuator gains drop to zero so the arm is limp, like a leader arm."""
        m = self.world.model
        with self.world.lock:
            self._torque = enabled
            for acts in self._act:
                for aid, _ in acts:
                    if enabled:
                        m.actuator_gainprm[aid, 0] = self._kp[aid]
                        m.actuator_biasprm[aid, 1] = -self._kp[aid]
                    else:
                        m.actuator_gainprm[aid, 0] = 0.0
                        m.actuator_biasprm[aid, 1] = 0.0

    def set_home(self) -> None:
        """Joints and targets to the scene's home pose (called by MujocoWorld.reset)."""
        m, d = self.world.model, self.world.data
        for value, acts in zip(self.defn.home, self._act, strict=True):
            for aid, sign in acts:  # a mirrored finger's own joint mirrors too
                d.qpos[m.jnt_qposadr[m.actuator_trnid[aid, 0]]] = sign * value
                d.ctrl[aid] = sign * value

    def close(self) -> None:
        """The world owns the physics; an arm has nothing of its own to release."""


class MujocoCamera:
    """A named MJCF camera rendered offscreen at its own rate (apprentice.robot_io.Camera).

    read() sleeps until the next frame time on a fixed grid of 1/fps, renders the physics
    state of that moment and stamps it with that state's time. The renderer (a GL context) is
    created in the first thread that reads, and must stay on that thread.
    """

    def __init__(
        self,
        world: MujocoWorld,
        name: str,
        width: int,
        height: int,
        fps: float,
        fovy: float | None = None,
        supersample: int = 1,
    ) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        if fovy is not None and not 0.0 < fovy < 180.0:
            raise ValueError(f"camera {name}: fovy must be in (0, 180) degrees, got {fovy}")
        # 2.0 (a YAML float) is 2; True, "2" and 2.5 are mistakes
        whole = isinstance(supersample, (int, float)) and not isinstance(supersample, bool)
        if not whole or supersample != int(supersample) or supersample < 1:
            raise ValueError(
                f"camera {name}: supersample must be a whole number >= 1, got {supersample!r}"
            )
        self.world = world
        self.name = name
        self.fps = fps
        self.supersample = int(supersample)
        m = world.model
        scene_fovy = float(m.camera(name).fovy[0])
        self.fovy = scene_fovy if fovy is None else float(fovy)
        # This reader's own lens: the renderer's frustum is scaled after each update_scene (the
        # model's cam_fovy is shared by every reader of the camera and stays the scene's).
        self._zoom = np.tan(np.deg2rad(self.fovy) / 2) / np.tan(np.deg2rad(scene_fovy) / 2)
        # The offscreen buffer (MJCF <global offwidth/offheight>) must hold the rendered size.
        g = m.vis.global_
        g.offwidth = max(int(g.offwidth), width * self.supersample)
        g.offheight = max(int(g.offheight), height * self.supersample)
        # MuJoCo's fovy is the vertical field of view; pixels are square, principal point centred.
        f = 0.5 * height / np.tan(np.deg2rad(self.fovy) / 2)
        self._spec = CameraSpec(name, width, height, f, f, (width - 1) / 2, (height - 1) / 2)
        self._render_data = mujoco.MjData(m)
        self._renderer: mujoco.Renderer | None = None
        self._seq = 0
        self._next: float | None = None  # monotonic time of the next frame
        self._last_time = -1.0  # sim time of the last rendered state
        self.dropped = 0

    @property
    def spec(self) -> CameraSpec:
        return self._spec

    def read(self, timeout: float = 1.0) -> Frame:
        period = 1.0 / self.fps
        now = time.monotonic()
        if self._next is None:
            self._next = now
        if self._next - now > timeout:
            raise TimeoutError(f"camera {self.name}: no frame within {timeout} s")
        if now - self._next > period:  # we fell behind: skip the frames we could not render
            missed = int((now - self._next) / period)
            self.dropped += missed
            self._next += missed * period
        time.sleep(max(0.0, self._next - time.monotonic()))
        self._next += period
        w, m, rd = self.world, self.world.model, self._render_data
        give_up = time.monotonic() + timeout
        while True:
            with w.lock:
                # Never show the same physics state twice: if physics stalled (a loaded host),
                # wait for its next step rather than publish a duplicate stamp.
                fresh = w.data.time > self._last_time
                if fresh:
                    rd.qpos[:] = w.data.qpos
                    rd.qvel[:] = w.data.qvel
                    rd.mocap_pos[:] = w.data.mocap_pos
                    rd.mocap_quat[:] = w.data.mocap_quat
                    rd.time = self._last_time = w.data.time
            if fresh:
                break
            if time.monotonic() > give_up:
                raise TimeoutError(f"camera {self.name}: physics is not advancing")
            time.sleep(0.001)
        mujoco.mj_kinematics(m, rd)
        mujoco.mj_camlight(m, rd)
        if self._renderer is None:
            k = self.supersample
            self._renderer = mujoco.Renderer(m, self._spec.height * k, self._spec.width * k)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._renderer.update_scene(rd, camera=self.name)
        if self._zoom != 1.0:
            for glcam in self._renderer.scene.camera:  # both eyes (mono: the same frustum)
                glcam.frustum_top *= self._zoom
                glcam.frustum_bottom *= self._zoom
                glcam.frustum_center *= self._zoom
        image = self._renderer.render()  # (kH, kW, 3) uint8, a fresh array
        if self.supersample > 1:  # INTER_AREA at a whole factor: the mean of each k×k block
            size = (self._spec.width, self._spec.height)
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        self._seq += 1
        return Frame(w.stamp(rd.time), image, self._seq)

    def close(self) -> None:
        # mujoco 2.3's Renderer has no close(); its GL context is freed when collected.
        close = getattr(self._renderer, "close", None)
        if close is not None:
            close()
        self._renderer = None
