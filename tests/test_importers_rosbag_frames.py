"""rosbag2 import with camera topics (sensor_msgs/Image and CompressedImage): the images go
through the actor's FrameAssembler, and every stored row holds the newest frame of each camera
at its tick, each frame stored once. Needs `robot.cameras` (issue 15, its sensors part)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import StoragePlugin, Writer

from o2o_robot import config
from o2o_robot.data.importers.common import run_import
from o2o_robot.data.store import TransitionStore
from o2o_robot.ingest.rosbag import RosbagSource
from test_importers_rosbag import CFG, MS, T0, TS, TYPES, _msg, session

pytestmark = pytest.mark.skipif(not hasattr(config, "camera_shapes"),
                                reason="robot.cameras is not configurable in this tree")
CAMERAS = [{"name": "front", "topic": "camera/front", "type": "image", "width": 8, "height": 6,
            "crop": [2, 0, 16, 12]},
           {"name": "wrist", "topic": "camera/wrist", "type": "compressed_image", "width": 5,
            "height": 5}]
PERIOD_MS = 33


def color(k: int, cam: str) -> tuple[int, int, int]:
    """Image k's solid colour (cropping and resizing a solid image keeps it)."""
    return (k % 200, 7 + (k % 3), 250 if cam == "front" else 100)


def image_msg(k: int, cam: str):
    T = TS.types
    hdr = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                    frame_id="")
    if cam == "front":   # 20 x 12 rgb8 with 4 bytes of row padding
        img = np.zeros((12, 64), np.uint8)
        img[:, :60] = np.tile(np.array(color(k, cam), np.uint8), 20)
        return T["sensor_msgs/msg/Image"](header=hdr, height=12, width=20, encoding="rgb8",
                                          is_bigendian=0, step=64, data=img.reshape(-1))
    buf = io.BytesIO()
    Image.fromarray(np.full((10, 10, 3), color(k, cam), np.uint8)).save(buf, format="png")
    return T["sensor_msgs/msg/CompressedImage"](header=hdr, format="png",
                                                data=np.frombuffer(buf.getvalue(), np.uint8))


def write_bag(path, events, images: list[int], garbled=()) -> None:
    """The session's events plus both cameras at ~30 Hz (image k at `images[k]` ns); the wrist
    images numbered in `garbled` are bytes that are no png."""
    types = {**TYPES, "front": "sensor_msgs/msg/Image", "wrist": "sensor_msgs/msg/CompressedImage"}
    cams = [(t, f"/camera/{c}", c, k) for k, t in enumerate(images) for c in ("front", "wrist")]
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for t, topic, kind, value in sorted(events + cams, key=lambda e: e[0]):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, types[kind], typestore=TS)
            msg = image_msg(value, kind) if kind in ("front", "wrist") else _msg(kind, value)
            if kind == "wrist" and value in garbled:
                msg.data = np.frombuffer(b"\x89PNG garbage", np.uint8)
            w.write(conns[topic], t, TS.serialize_cdr(msg, types[kind]))


def import_bag(tmp_path, cameras, garbled=()):
    """Import a two-episode session with `cameras`; returns the source, stamps, episode ends,
    the image times and the store's frames and next frames per camera."""
    cfg = config.load_config(overrides={"control": CFG.control.model_dump(mode="json"),
                                        "robot": {"cameras": cameras}})
    events = session([(0, 900), (1500, 2200)], [(950, "/operator/success")])
    images = [T0 + (PERIOD_MS * k + 5) * MS for k in range(2600 // PERIOD_MS)]
    write_bag(tmp_path / "bag", events, images, garbled)
    src = RosbagSource(tmp_path / "bag", cfg)
    run_import(src, tmp_path / "s.zarr", source="demo")
    with TransitionStore.open(tmp_path / "s.zarr") as st:
        assert st.cameras == src.cameras and st.validate() == [] and st.num_episodes >= 2
        frames = {c: (st.read_frames(c), st.read_next_frames(c)) for c in st.cameras}
        return (src, st.read(["timestamp"])["timestamp"], [e["end"] for e in st.episodes()],
                images, frames)


def check_frames(stamps, ends, images, frames, skip=()) -> None:
    """Each row holds the newest (not garbled) image of each camera at its tick, and its next
    frame is the next row's within an episode."""
    for cam, (got, nxt) in frames.items():
        for i, t in enumerate(stamps):
            # a tick sees the messages before it (one at its own time comes after it); in
            # whole ms from T0, as float seconds since the epoch resolve only ~0.2 us
            tick_ns = int(round((t - T0 / 1e9) * 1e3)) * MS + T0
            k = int(np.searchsorted(images, tick_ns, side="left")) - 1
            while cam == "wrist" and k in skip:
                k -= 1
            assert (got[i] == np.array(color(k, cam), np.uint8)).all(), (cam, i, k)
            if i + 1 not in ends:
                np.testing.assert_array_equal(nxt[i], got[i + 1])


def test_a_bag_with_image_and_compressed_image_topics_lands_with_its_frames(tmp_path):
    src, stamps, ends, images, frames = import_bag(tmp_path, CAMERAS)
    assert src.cameras == {"front": (6, 8, 3), "wrist": (5, 5, 3)}
    check_frames(stamps, ends, images, frames)
    assert src.stats()["dropped"] == {}


def test_an_undecodable_image_is_dropped_and_counted_not_stored(tmp_path):
    garbled = {10, 11, 40}
    src, stamps, ends, images, frames = import_bag(tmp_path, CAMERAS, garbled)
    assert src.stats()["dropped"] == {"camera/wrist": 3}, src.stats()
    check_frames(stamps, ends, images, frames, skip=garbled)
