"""Read an ONNX model's default opset straight off the protobuf wire format (no `onnx`
package on the robot computer): what `runtime.OnnxPolicy` checks against MIN_OPSET."""
from __future__ import annotations


def onnx_opset(data: bytes) -> int:
    """Default-domain opset of a serialized ModelProto, read straight off the protobuf wire format
    (field 8 = opset_import: field 1 domain, field 2 version), so the robot needs no `onnx` package."""
    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[pos]
            value |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not byte & 0x80:
                return value, pos

    def fields(start: int, end: int):
        pos = start
        while pos < end:
            key, pos = varint(pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, pos = varint(pos)
            elif wire == 2:
                size, pos = varint(pos)
                value, pos = (pos, pos + size), pos + size
            elif wire in (1, 5):
                value, pos = None, pos + (8 if wire == 1 else 4)
            else:
                raise ValueError(f"unsupported protobuf wire type {wire}")
            yield number, value

    for number, span in fields(0, len(data)):
        if number == 8:
            domain, version = "", None
            for sub, value in fields(*span):
                if sub == 1:
                    domain = data[value[0]:value[1]].decode()
                elif sub == 2:
                    version = value
            if domain in ("", "ai.onnx") and version is not None:
                return int(version)
    raise ValueError("no default-domain opset_import")
