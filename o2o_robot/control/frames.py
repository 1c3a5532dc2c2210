"""FrameAssembler: camera images -> the newest uint8 frame per camera, cropped, resized, converted.

The ROS node turns each sensor_msgs/Image into (encoding, height, width, step, data) and each
CompressedImage into (format, data) and calls `update_image` / `update_compressed` from its
subscription callback; the control tick reads `ready`, `any_stale` and `newest`. Nothing here
knows ROS.

One frame is built with a single `np.take` from the message bytes into a preallocated buffer:
an index map, computed once per input geometry (encoding, size, row step), holds for every
output pixel and channel the byte it comes from, so crop, nearest-pixel resize and the channel
order (bgr8 -> rgb, mono8 -> rgb) cost one gather and no allocation. When the crop is a whole
multiple of the output size the frame is the area mean instead (one gather per source pixel of
a block, up to MAX_AREA of them, summed into a preallocated buffer): nearest-pixel shrinking
by 10x aliases badly. A 1-channel output from a colour image is its luma (BT.601 integer weights).

A rejected image (unknown camera, wrong encoding or format, a buffer shorter than its size
says, an image too small for the crop, an undecodable jpeg/png, a non-finite stamp)
writes nothing: the previous frame and its age are kept, and the drop is counted per camera in
`dropped` with the last reason in `drop_reasons`. A stale camera holds the robot like any stale
input (ControlCore).

`stamp_s` is the receive time on the tick's clock (as for `ObservationAssembler`).
"""
from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import numpy as np

from o2o_robot.config import CameraSource

# Raw encodings: bytes per pixel and, per output rgb channel, the byte offset within a pixel.
ENCODINGS = {"rgb8": (3, (0, 1, 2)), "bgr8": (3, (2, 1, 0)), "mono8": (1, (0, 0, 0))}
COMPRESSED_FORMATS = ("jpeg", "png")
LUMA_WEIGHTS = (77, 150, 29)    # BT.601 luma * 256 (sum 256): Y = (77 R + 150 G + 29 B) >> 8
MAX_AREA = 256                  # source pixels per output pixel up to which the area mean is used


class BadImage(ValueError):
    """An image that was rejected; `reason` says why in words."""

    def __init__(self, camera: str, reason: str):
        super().__init__(f"{camera}: {reason}")
        self.camera = camera
        self.reason = reason


def compressed_format(fmt: str) -> str | None:
    """'jpeg' or 'png' from a CompressedImage `format` ("jpeg", "png", "rgb8; jpeg compressed
    bgr8", ...), or None when it names neither."""
    text = fmt.lower()
    for name, words in (("jpeg", ("jpeg", "jpg")), ("png", ("png",))):
        if any(w in text for w in words):
            return name
    return None


class _Camera:
    """One camera's conversion state: index maps per input geometry and the newest frame."""

    def __init__(self, src: CameraSource):
        self.src = src
        self.shape = src.shape
        self.frame = np.zeros(src.shape, dtype=np.uint8)     # the newest accepted frame
        self._rgb = np.empty((src.height, src.width, 3), dtype=np.uint8)
        self._acc = np.empty((src.height, src.width, 3), dtype=np.uint32)
        self._key: tuple | None = None
        self._maps: list[np.ndarray] = []     # one gather per block offset (1 for nearest)

    def maps_for(self, encoding: str, height: int, width: int, step: int) -> list[np.ndarray]:
        """Flat byte indices of every output (y, x, rgb channel), per block offset; cached."""
        key = (encoding, height, width, step)
        if key == self._key:
            return self._maps
        bpp, order = ENCODINGS[encoding]
        x0, y0, cw, ch = self.src.crop or (0, 0, width, height)
        if x0 + cw > width or y0 + ch > height:
            raise BadImage(self.src.name, f"{width}x{height} image is too small for crop "
                                          f"{self.src.crop}")
        out_h, out_w = self.shape[:2]
        chan = np.asarray(order, dtype=np.intp)
        if ch % out_h == 0 and cw % out_w == 0 and (ch // out_h) * (cw // out_w) <= MAX_AREA:
            fy, fx = ch // out_h, cw // out_w
            offsets = [(dy, dx) for dy in range(fy) for dx in range(fx)]
            rows0, cols0 = y0 + np.arange(out_h) * fy, x0 + np.arange(out_w) * fx
        else:                                              # nearest source pixel centre
            offsets = [(0, 0)]
            rows0 = y0 + ((np.arange(out_h) + 0.5) * ch / out_h).astype(np.intp)
            cols0 = x0 + ((np.arange(out_w) + 0.5) * cw / out_w).astype(np.intp)
        self._maps = [((rows0 + dy)[:, None, None] * step + (cols0 + dx)[None, :, None] * bpp
                       + chan[None, None, :]).astype(np.intp) for dy, dx in offsets]
        self._key = key
        return self._maps

    def convert(self, data: np.ndarray, maps: list[np.ndarray]) -> None:
        """Gather the message bytes into `self.frame` through `maps` (no allocation)."""
        if len(maps) == 1:
            np.take(data, maps[0], out=self._rgb, mode="clip")   # "raise" would buffer
        else:
            self._acc.fill(len(maps) // 2)                 # rounds the mean to nearest
            for index in maps:
                np.take(data, index, out=self._rgb, mode="clip")
                np.add(self._acc, self._rgb, out=self._acc)
            np.floor_divide(self._acc, len(maps), out=self._acc, casting="unsafe")
            np.copyto(self._rgb, self._acc, casting="unsafe")
        if self.shape[2] == 3:
            np.copyto(self.frame, self._rgb)
            return
        luma, term = self._acc[..., 0], self._acc[..., 1]
        np.multiply(self._rgb[..., 0], LUMA_WEIGHTS[0], out=luma, dtype=np.uint32)
        for c in (1, 2):
            np.multiply(self._rgb[..., c], LUMA_WEIGHTS[c], out=term, dtype=np.uint32)
            np.add(luma, term, out=luma)
        np.right_shift(luma, 8, out=luma)
        np.copyto(self.frame[..., 0], luma, casting="unsafe")


class FrameAssembler:
    """Newest frame per configured camera, its age, readiness and drop counts."""

    def __init__(self, cameras: Sequence[CameraSource], *, strict: bool = False):
        """`strict=True` raises BadImage on a rejected image (after counting it)."""
        self.strict = strict
        self._cams = {src.name: _Camera(src) for src in cameras}
        self.names: list[str] = list(self._cams)
        self._stamps = {name: -np.inf for name in self.names}   # -inf = never arrived
        self.received: dict[str, int] = dict.fromkeys(self.names, 0)
        self.dropped: dict[str, int] = {}
        self.drop_reasons: dict[str, str] = {}
        self._lock = threading.Lock()   # callbacks and the tick may run on different threads

    def __bool__(self) -> bool:
        return bool(self._cams)

    # ------------------------------------------------------------------------------- updates
    def update_image(self, camera: str, encoding: str, height: int, width: int, step: int,
                     data, stamp_s: float) -> bool:
        """A sensor_msgs/Image: `data` holds `height` rows of `step` bytes."""
        try:
            cam = self._camera(camera, "image", stamp_s)
            if encoding not in ENCODINGS:
                raise BadImage(camera, f"encoding {encoding!r}: expected one of "
                                       f"{', '.join(ENCODINGS)}")
            buf = np.frombuffer(data, dtype=np.uint8)
            if height < 1 or width < 1 or step < width * ENCODINGS[encoding][0] \
                    or buf.size < height * step:
                raise BadImage(camera, f"{width}x{height} {encoding} with step {step} needs "
                                       f"{height * step} bytes, got {buf.size}")
            maps = cam.maps_for(encoding, height, width, step)
        except BadImage as exc:
            return self._reject(camera, exc)
        return self._write(cam, buf, maps, stamp_s)

    def update_compressed(self, camera: str, fmt: str, data, stamp_s: float) -> bool:
        """A sensor_msgs/CompressedImage: jpeg or png bytes, decoded here (PIL)."""
        try:
            cam = self._camera(camera, "compressed_image", stamp_s)
            kind = compressed_format(fmt)
            if kind is None:
                raise BadImage(camera, f"format {fmt!r}: expected jpeg or png")
            pixels = _decode(camera, kind, data)
            height, width, channels = pixels.shape
            encoding = "rgb8" if channels == 3 else "mono8"
            maps = cam.maps_for(encoding, height, width, width * channels)
        except BadImage as exc:
            return self._reject(camera, exc)
        return self._write(cam, pixels.reshape(-1), maps, stamp_s)

    def _camera(self, camera: str, kind: str, stamp_s: float) -> _Camera:
        cam = self._cams.get(camera)
        if cam is None:
            raise BadImage(camera, "not a configured camera")
        if cam.src.type != kind:
            raise BadImage(camera, f"configured as {cam.src.type}, got a {kind} update")
        if not np.isfinite(stamp_s):
            raise BadImage(camera, f"stamp_s is not finite ({stamp_s!r})")
        return cam

    def _write(self, cam: _Camera, data: np.ndarray, maps: list[np.ndarray], stamp_s: float) -> bool:
        with self._lock:
            cam.convert(data, maps)
            self._stamps[cam.src.name] = stamp_s
        self.received[cam.src.name] += 1
        return True

    def _reject(self, camera: str, exc: BadImage) -> bool:
        self.dropped[camera] = self.dropped.get(camera, 0) + 1
        self.drop_reasons[camera] = exc.reason
        if self.strict:
            raise exc
        return False

    # ----------------------------------------------------------------------------- the tick
    @property
    def ready(self) -> bool:
        """True once every camera has delivered an accepted image (also with no cameras)."""
        return all(np.isfinite(s) for s in self._stamps.values())

    def any_stale(self, now_s: float, timeout_ms: float) -> bool:
        """Is any camera's newest frame older than `timeout_ms` (or absent)?"""
        return any((now_s - s) * 1000.0 > timeout_ms for s in self._stamps.values())

    def ages_ms(self, now_s: float) -> dict[str, float]:
        """Age of each camera's newest frame in ms (inf before the first one)."""
        return {name: (now_s - s) * 1000.0 for name, s in self._stamps.items()}

    def newest(self) -> dict[str, np.ndarray]:
        """A copy of each camera's newest frame (uint8 [H, W, C]): a row keeps it."""
        with self._lock:
            return {name: cam.frame.copy() for name, cam in self._cams.items()}

    def stats(self, now_s: float | None = None) -> dict:
        """Counts (and ages when `now_s` is given) for the status JSON."""
        info = {"ready": self.ready, "received": dict(self.received),
                "dropped": dict(self.dropped), "drop_reasons": dict(self.drop_reasons)}
        if now_s is not None:
            info["ages_ms"] = {k: (round(v, 1) if np.isfinite(v) else None)
                               for k, v in self.ages_ms(now_s).items()}
        return info


def _decode(camera: str, kind: str, data) -> np.ndarray:
    """jpeg/png bytes -> uint8 [H, W, 3] (colour) or [H, W, 1] (grey), else BadImage."""
    from PIL import Image, UnidentifiedImageError   # imported once used: vector robots skip it

    try:
        with Image.open(io.BytesIO(bytes(data)), formats=[kind.upper()]) as img:
            img = img.convert("L" if img.mode in ("L", "I;16", "1") else "RGB")
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImage(camera, f"cannot decode the {kind} image: {exc}") from None
    return pixels if pixels.ndim == 3 else pixels[:, :, None]
