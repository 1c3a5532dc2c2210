"""Render frames/s of the sim camera (MuJoCo, headless EGL): what the sim bridge can publish.

For each image size (the pixel reach task's camera "front", config/sim_reach_pixels.yaml,
rendered at that size), with the arm moving between frames:

  render          SimCameras.render: the render thread's update_scene + render into the buffer
  render+convert  SimFrames.frames: render, then the actor's FrameAssembler (as `demos
                  generate` stores them)
  step+render     env.step + render: the sim bridge's work per step with one camera

and the OpenGL renderer in use (llvmpipe = software rendering on the CPU: no GPU, or EGL
without one). Single process; the render thread is SimCameras' own.

    MUJOCO_GL=egl python benchmarks/sim_camera.py [--frames 300] [--sizes 48 64 84 128]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import o2o_robot.sim  # noqa: F401  (sets MUJOCO_GL=egl when nothing is set)
from o2o_robot.config import load_config, resolve_config_path
from o2o_robot.sim.camera import SimCameras, SimFrames
from o2o_robot.sim.envs import make_env


def rate(fn, frames: int) -> float:
    fn()                                    # first call: GL context, buffers
    start = time.perf_counter()
    for _ in range(frames):
        fn()
    return frames / (time.perf_counter() - start)


def gl_renderer(model) -> str:
    """The GL_RENDERER string of a fresh EGL context (e.g. llvmpipe, or the GPU's name)."""
    import mujoco
    from OpenGL import GL

    renderer = mujoco.Renderer(model, 8, 8)
    try:
        renderer._gl_context.make_current()   # noqa: SLF001  (a query, nothing drawn)
        return GL.glGetString(GL.GL_RENDERER).decode()
    except Exception as exc:   # another backend (osmesa, glfw): say what failed
        return f"unknown ({type(exc).__name__})"
    finally:
        renderer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 84, 128])
    args = parser.parse_args()
    base = load_config(resolve_config_path("sim_reach_pixels.yaml"))
    env = make_env(base.sim)
    env.reset(seed=0)
    data = env.unwrapped.data
    rng = np.random.default_rng(0)
    print(f"OpenGL renderer: {gl_renderer(env.unwrapped.model)}")
    print(f"{'size':>9} | {'render/s':>9} | {'render+convert/s':>16} | {'step+render/s':>13}")
    for size in args.sizes:
        cams = [base.robot.cameras[0].model_copy(update={"width": size, "height": size})]
        renderer = SimCameras(env.unwrapped.model, cams)
        frames = SimFrames(env.unwrapped.model, cams)
        try:
            def step():
                env.step(rng.uniform(-1, 1, 3))

            def step_render():
                step()
                renderer.render(data, "front")

            render = rate(lambda: (step(), renderer.render(data, "front")), args.frames)
            convert = rate(lambda: (step(), frames.frames(data)), args.frames)
            per_step = rate(step_render, args.frames)
            step_only = rate(step, args.frames)
        finally:
            renderer.close()
            frames.close()
        # render figures without the env step they were interleaved with (the arm moves)
        only = lambda r: 1.0 / max(1.0 / r - 1.0 / step_only, 1e-9)  # noqa: E731
        print(f"{size:4d}x{size:<4d} | {only(render):9.0f} | {only(convert):16.0f} | "
              f"{per_step:13.0f}", flush=True)
    env.close()


if __name__ == "__main__":
    main()
