"""MuJoCo tasks: env wrapper, rewards, cameras, resets, expert controllers.

Without a display, camera rendering needs a headless OpenGL: MuJoCo picks its backend from
`MUJOCO_GL` when it is first imported, so it is set to "egl" here, before any module of this
package imports mujoco, unless the environment chose one or a display is there.
"""
import os

if "DISPLAY" not in os.environ and "WAYLAND_DISPLAY" not in os.environ:
    os.environ.setdefault("MUJOCO_GL", "egl")
