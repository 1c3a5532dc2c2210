"""ament_python package that also installs with pip (`pip install -e .[dev]`)."""
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "o2o_robot"
ROOT = Path(__file__).parent


def data_tree(folder: str) -> list[tuple[str, list[str]]]:
    """(install dir, files) pairs that mirror `folder` under share/o2o_robot."""
    pairs = []
    if not (ROOT / folder).is_dir():
        return pairs
    for sub in sorted(p for p in (ROOT / folder).rglob("*") if p.is_dir()) + [ROOT / folder]:
        files = sorted(str(f.relative_to(ROOT)) for f in sub.iterdir() if f.is_file())
        if files:
            pairs.append((f"share/{PACKAGE}/{sub.relative_to(ROOT)}", files))
    return pairs


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["tests", "tests.*"]),
    package_data={PACKAGE: ["resources/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *data_tree("launch"),
        *data_tree("config"),
        *data_tree("sim"),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.26",
        "pyyaml>=6",
        "pydantic>=2.6,<3",
        "zarr>=3.0,<4",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "mujoco>=3.1",
        "gymnasium>=1.0",
        "imageio>=2.30",  # gymnasium's MuJoCo envs import it
        "pillow>=10",     # camera images: jpeg/png CompressedImage decoding
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
    ],
    extras_require={
        # torch is not pinned here: scripts/setup_env.sh picks the CPU or CUDA build.
        "learner": ["torch>=2.4", "onnxscript>=0.2"],
        "gpu": ["onnxruntime-gpu>=1.18"],
        # Unofficial Jazzy wheels, only for machines without a ROS 2 install (pins with hashes
        # in requirements/ros-jazzy.txt).
        "ros": ["ros-jazzy-rclpy[fastrtps]==7.1.6", "ros-jazzy-std-msgs==5.3.6",
                "ros-jazzy-sensor-msgs==5.3.6", "ros-jazzy-geometry-msgs==5.3.6",
                "ros-jazzy-std-srvs==5.3.6"],
        "dev": ["pytest>=8", "cyclonedds==11.0.1"],
        # `o2o-robot data import {minari,rosbag,hdf5}` and `data export --minari`.
        "import": ["minari>=0.5", "h5py>=3.10", "rosbags>=0.10"],
    },
    zip_safe=True,
    maintainer="o2o_robot developers",
    description="Offline-to-online RL on real robots through ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "o2o-robot = o2o_robot.cli:main",
            "actor_node = o2o_robot.ros.entry:actor_node",
            "learner_node = o2o_robot.ros.entry:learner_node",
            "sim_bridge = o2o_robot.ros.entry:sim_bridge",
            "teleop_node = o2o_robot.ros.entry:teleop_node",
            "keyboard_teleop = o2o_robot.ros.entry:keyboard_teleop",
            "scripted_teleop = o2o_robot.ros.entry:scripted_teleop",
        ],
    },
)
