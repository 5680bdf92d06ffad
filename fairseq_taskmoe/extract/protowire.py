"""Protocol Buffers wire format, the little the Argos packaging writes (ONNX, sentencepiece).

A key is ``field << 3 | wire type`` (0 varint, 2 length-delimited, 5 fixed32). Writing by
hand keeps ``onnx`` and ``protobuf`` out of the project's dependencies; the tests decode
what is written, and LibreTranslate's environment loads it with the real libraries.
"""

import struct


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def int_field(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def bytes_field(field: int, value) -> bytes:
    value = value.encode("utf-8") if isinstance(value, str) else value
    return varint(field << 3 | 2) + varint(len(value)) + value


def float_field(field: int, value: float) -> bytes:
    return varint(field << 3 | 5) + struct.pack("<f", value)
