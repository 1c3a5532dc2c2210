"""Camera messages <-> the plain values of `control/frames.py` (the conversion lives there).

`subscribe_cameras` gives the actor node one subscription per `robot.cameras` entry that hands
sensor_msgs/Image (encoding, size, step, bytes) or sensor_msgs/CompressedImage (format, bytes)
to the ControlCore's FrameAssembler; a rejected image raises `MessageError` with the reason, so
the node's guard counts it like any malformed message (and the FrameAssembler counts it per
camera). `image_to_msg` / `compressed_to_msg` build the Image / CompressedImage the sim bridge publishes.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

from o2o_robot.config import CameraSource
from o2o_robot.control.frames import FrameAssembler
from o2o_robot.ros.convert import MessageError

MSG_TYPES = {"image": Image, "compressed_image": CompressedImage}


def camera_handler(src: CameraSource, frames: FrameAssembler) -> Callable:
    """The subscription callback body of camera `src`: the message into `frames`, stamped with
    its receive time on the monotonic clock of the tick; MessageError when it is rejected."""
    if src.type == "image":
        def on_image(msg: Image) -> None:
            if not frames.update_image(src.name, msg.encoding, msg.height, msg.width, msg.step,
                                       msg.data, time.monotonic()):
                raise MessageError(frames.drop_reasons.get(src.name, "rejected"))
        return on_image

    def on_compressed(msg: CompressedImage) -> None:
        if not frames.update_compressed(src.name, msg.format, msg.data, time.monotonic()):
            raise MessageError(frames.drop_reasons.get(src.name, "rejected"))
    return on_compressed


def image_to_msg(pixels: np.ndarray, *, stamp: Time | None = None, frame_id: str = "",
                 msg: Image | None = None) -> Image:
    """uint8 [H, W, 3] (rgb8) or [H, W, 1] (mono8) pixels as a sensor_msgs/Image (`msg` reused)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise MessageError(f"image: expected uint8 [H, W, 1 or 3], got {pixels.dtype} "
                           f"{list(pixels.shape)}")
    msg = Image() if msg is None else msg
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = "rgb8" if pixels.shape[2] == 3 else "mono8"
    msg.is_bigendian = 0
    msg.step = int(pixels.shape[1] * pixels.shape[2])
    msg.data = np.ascontiguousarray(pixels).tobytes()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def compressed_to_msg(pixels: np.ndarray, *, stamp: Time | None = None, frame_id: str = "",
                      fmt: str = "png") -> CompressedImage:
    """uint8 [H, W, 3 or 1] pixels as a png (lossless) or jpeg sensor_msgs/CompressedImage."""
    from PIL import Image as PilImage

    data = io.BytesIO()
    PilImage.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(
        data, format=fmt.upper())
    msg = CompressedImage(format=fmt, data=data.getvalue())
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg
