"""SimCameras: headless renders of the MuJoCo cameras that `robot.cameras` names.

Each configured camera is the model camera of the same name (reach: "front" in
sim/reach_arm/scene.xml), rendered at `sim.render_size` or else the camera's own width x height,
as uint8 rgb [H, W, 3] (the actor converts to mono when the camera asks for one channel, as it
would for a real colour camera). Headless rendering needs `MUJOCO_GL=egl` (or osmesa) in the
environment before mujoco is imported; `o2o_robot.sim` sets egl when nothing is set and there
is no display.

An OpenGL context is current in one thread only (EGL refuses to make it current in another),
so every GL call happens on one render thread that SimCameras owns: it makes the renderers on
first use and frees them on `close`, and `render` hands it the job and waits. Any thread may
render (a node built on one thread and spun on another); each camera keeps its output buffer,
which `render` returns (overwritten by the next render of that camera).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

import mujoco
import numpy as np

from o2o_robot.config import CameraSource


def render_sizes(cameras: Sequence[CameraSource],
                 render_size: Sequence[int] | None) -> dict[str, tuple[int, int]]:
    """Camera name -> (height, width) the sim renders it at (`sim.render_size` is [w, h])."""
    if render_size is not None:
        return {c.name: (int(render_size[1]), int(render_size[0])) for c in cameras}
    return {c.name: (c.height, c.width) for c in cameras}


def check_cameras(model: mujoco.MjModel, cameras: Sequence[CameraSource],
                  render_size: Sequence[int] | None) -> None:
    """ValueError naming the key when a configured camera cannot be rendered from `model`: no
    model camera of that name, a crop outside the rendered image, a size beyond the model's
    offscreen buffer (`<visual><global offwidth offheight>`)."""
    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    sizes = render_sizes(cameras, render_size)
    max_w, max_h = model.vis.global_.offwidth, model.vis.global_.offheight
    for i, cam in enumerate(cameras):
        if cam.name not in names:
            raise ValueError(f"robot.cameras.{i}.name: the sim model has no camera {cam.name!r} "
                             f"(it has: {', '.join(n for n in names if n) or 'none'})")
        h, w = sizes[cam.name]
        if w > max_w or h > max_h:
            raise ValueError(f"robot.cameras.{i}: renders at {w}x{h}, beyond the model's "
                             f"offscreen buffer {max_w}x{max_h}")
        if cam.crop is not None and (cam.crop[0] + cam.crop[2] > w or cam.crop[1] + cam.crop[3] > h):
            raise ValueError(f"robot.cameras.{i}.crop: {cam.crop} lies outside the {w}x{h} "
                             f"image the sim renders (sim.render_size)")


class SimCameras:
    """Renders the configured cameras of one MuJoCo model (see the module docstring)."""

    def __init__(self, model: mujoco.MjModel, cameras: Sequence[CameraSource],
                 render_size: Sequence[int] | None = None, *, blank: bool = False):
        """`blank` (`sim.blank_cameras`): every render is all zeros, no GL is touched."""
        check_cameras(model, cameras, render_size)
        self.model, self.blank = model, blank
        self.sizes = render_sizes(cameras, render_size)
        self.names = list(self.sizes)
        self._out = {name: np.zeros((h, w, 3), dtype=np.uint8)
                     for name, (h, w) in self.sizes.items()}
        self.frames_rendered = 0
        self._call = threading.Lock()            # one render at a time
        self._done = threading.Event()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="o2o-sim-cameras", daemon=True)
        self._thread.start()

    def render(self, data: mujoco.MjData, name: str) -> np.ndarray:
        """Camera `name` of the current state `data` (run mj_forward/kinematics first); blocks
        until the render thread has drawn it. The returned buffer is reused by the next call."""
        with self._call:
            if not self._thread.is_alive():
                raise RuntimeError("SimCameras is closed")
            if self.blank:     # the negative control of the pixel learning check
                self.frames_rendered += 1
                return self._out[name]   # zeros, never drawn into
            self._done.clear()
            self._jobs.put((data, name))
            self._done.wait()
            error, self._error = self._error, None
            if error is not None:
                raise error
            self.frames_rendered += 1
            return self._out[name]

    def render_all(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """Every configured camera, in config order."""
        return {name: self.render(data, name) for name in self.names}

    def _serve(self) -> None:
        """The render thread: owns every GL context, frees them when closed."""
        renderers: dict[str, mujoco.Renderer] = {}
        try:
            while (job := self._jobs.get()) is not None:
                data, name = job
                try:
                    renderer = renderers.get(name)
                    if renderer is None:
                        h, w = self.sizes[name]
                        renderer = renderers[name] = mujoco.Renderer(self.model, height=h, width=w)
                        # A new renderer's first image of a state differs from its later ones
                        # (421 of 2,304 pixels at 48 x 48): draw one to discard, so a state
                        # always gives the same frame (a resumed run's first frame included).
                        renderer.update_scene(data, camera=name)
                        renderer.render(out=self._out[name])
                    renderer.update_scene(data, camera=name)
                    renderer.render(out=self._out[name])
                except Exception as exc:   # handed to the caller (no GL, bad name, ...)
                    self._error = exc
                finally:
                    self._done.set()
        finally:
            for renderer in renderers.values():
                renderer.close()

    def close(self) -> None:
        """Stop the render thread and free its GL contexts (idempotent)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout=10.0)


class SimFrames:
    """The frames the actor would assemble from the sim's cameras: each camera rendered, then
    cropped, resized and converted by the actor's own FrameAssembler (control/frames.py), so
    demonstrations generated without ROS hold the frames a robot run would have stored."""

    def __init__(self, model: mujoco.MjModel, cameras: Sequence[CameraSource],
                 render_size: Sequence[int] | None = None, *, blank: bool = False):
        from o2o_robot.control.frames import FrameAssembler

        self._cams = SimCameras(model, cameras, render_size, blank=blank)
        # The raw render goes in as an rgb8 Image whatever the topic's type (the bridge's png
        # CompressedImage decodes to the same pixels).
        self._asm = FrameAssembler([c.model_copy(update={"type": "image"}) for c in cameras],
                                   strict=True)

    def frames(self, data: mujoco.MjData) -> dict[str, np.ndarray]:
        """{camera: uint8 [H, W, C]} of the current state, new arrays."""
        for name in self._cams.names:
            pixels = self._cams.render(data, name)
            h, w, _ = pixels.shape
            self._asm.update_image(name, "rgb8", h, w, w * 3, pixels.reshape(-1), 0.0)
        return self._asm.newest()

    def close(self) -> None:
        self._cams.close()


def camera_env(env, cameras: Sequence[CameraSource], sim_cfg):
    """`env` as the policy of a camera robot sees it (`CameraObservation`), or `env` itself when
    `cameras` is empty (a vector robot)."""
    return CameraObservation(env, cameras, sim_cfg) if cameras else env


class CameraObservation:
    """A reach env whose observations are the actor's: {"state": the env's vector (float32),
    camera: uint8 [H, W, C * frame_stack]}, each frame rendered and converted as `SimFrames`
    does and stacked by the actor's own `FrameStacks` (the stack of a row's obs: that row's
    frame after the frames of the episode's earlier rows). `frames` holds the newest single
    frame per camera at the current observation: what the store keeps beside a row's obs.
    Used where no ROS graph runs: `o2o-robot train` and finetune's evaluations."""

    def __init__(self, env, cameras: Sequence[CameraSource], sim_cfg):
        from o2o_robot.control.frame_stack import FrameStacks

        self.env = env
        self._sim = SimFrames(env.unwrapped.model, cameras, sim_cfg.render_size,
                              blank=sim_cfg.blank_cameras)
        self._stacks = FrameStacks(cameras)
        self.frames: dict[str, np.ndarray] = {}

    def __getattr__(self, name: str):
        return getattr(self.env, name)     # spaces, unwrapped, ...: the env's own

    def reset(self, **kwargs):
        """Reset the env; the first observation's stacks repeat its one frame."""
        obs, info = self.env.reset(**kwargs)
        self.frames = self._sim.frames(self.env.unwrapped.data)
        return self._observe(obs, first=True), info

    def step(self, action):
        """The frame the action was chosen on joins the history, then the env steps."""
        self._stacks.commit(self.frames)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.frames = self._sim.frames(self.env.unwrapped.data)
        return self._observe(obs, first=False), reward, terminated, truncated, info

    def _observe(self, obs, *, first: bool) -> dict[str, np.ndarray]:
        stacks = self._stacks.build(self.frames, first=first)   # reused buffers: copied
        return {"state": np.asarray(obs, np.float32), **{k: v.copy() for k, v in stacks.items()}}

    def close(self) -> None:
        """Stop the renderer, then close the env."""
        self._sim.close()
        self.env.close()
