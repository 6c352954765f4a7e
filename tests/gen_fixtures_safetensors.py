#!/usr/bin/python3
"""Fixtures for tests/check_safetensors.c (tests/fixtures/st_*.safetensors).

Python's safetensors package is not in Debian, so this module carries its own
writer that follows the reference serializer (huggingface/safetensors,
safetensors/src/tensor.rs: prepare() and serialize(); serde_json's compact
output and string escaping), written from that source, not from emoe's C code:

  - tensors sorted by dtype, descending in the order of the Rust `Dtype` enum,
    then by name (Rust `String` order: bytewise UTF-8);
  - header `{"__metadata__":{...},"NAME":{"dtype":..,"shape":[..],
    "data_offsets":[b,e]},...}` with metadata first when given (`None` omits it,
    `{}` writes `"__metadata__":{}`), tensors in data order, no spaces;
  - strings escaped like serde_json: \\" \\\\ \\b \\f \\n \\r \\t, other
    characters below U+0020 as \\u00xx (lower-case hex), everything else raw UTF-8;
  - header padded with spaces to a multiple of 8 bytes; u64 little-endian length.

The reference stores __metadata__ in a HashMap, so its key order is arbitrary;
we write the keys sorted (one of the orders the reference can produce), as
emoe_safetensors_write() does.

The tensors' values are simple closed forms that check_safetensors.c rebuilds
(keep the two in sync).  Run via: /usr/bin/python3 tests/gen_fixtures.py safetensors
"""
import json
import os
import struct

# The Rust enum's order (BOOL < U8 < I8 < F8_E5M2 < F8_E4M3 < I16 < U16 < F16 < BF16
# < I32 < U32 < F32 < F64 < I64 < U64), without the FP8 types we never write.
DTYPE_ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
               "F64", "I64", "U64"]
DTYPE_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
STRUCT = {"BOOL": "?", "U8": "B", "I8": "b", "I16": "h", "U16": "H", "F16": "e",
          "BF16": "H", "I32": "i", "U32": "I", "F32": "f", "F64": "d", "I64": "q",
          "U64": "Q"}


def serde_escape(s):
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == '\\':
            out.append('\\\\')
        elif ch == '\b':
            out.append('\\b')
        elif ch == '\f':
            out.append('\\f')
        elif ch == '\n':
            out.append('\\n')
        elif ch == '\r':
            out.append('\\r')
        elif ch == '\t':
            out.append('\\t')
        elif o < 0x20:
            out.append('\\u%04x' % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def serialize(tensors, metadata=None):
    """tensors: {name: (dtype, shape, data bytes)}; metadata: dict or None."""
    items = sorted(tensors.items(),
                   key=lambda kv: (-DTYPE_ORDER.index(kv[1][0]), kv[0].encode("utf-8")))
    parts = []
    if metadata is not None:
        body = ",".join(serde_escape(k) + ":" + serde_escape(v)
                        for k, v in sorted(metadata.items(), key=lambda kv: kv[0].encode()))
        parts.append('"__metadata__":{' + body + "}")
    offset = 0
    for name, (dtype, shape, data) in items:
        n = DTYPE_SIZE[dtype]
        for d in shape:
            n *= d
        assert len(data) == n, name
        parts.append(serde_escape(name) + ':{"dtype":' + serde_escape(dtype) + ',"shape":['
                     + ",".join(str(d) for d in shape) + '],"data_offsets":['
                     + str(offset) + "," + str(offset + n) + "]}")
        offset += n
    header = ("{" + ",".join(parts) + "}").encode("utf-8")
    header += b" " * ((8 - len(header) % 8) % 8)
    return struct.pack("<Q", len(header)) + header + b"".join(
        data for _, (_, _, data) in items)


def pack(dtype, values):
    return struct.pack("<%d%s" % (len(values), STRUCT[dtype]), *values)


def mixed_tensors():
    """The tensors of st_mixed.safetensors (rebuilt in check_safetensors.c)."""
    t = {}
    t["w.f32"] = ("F32", [2, 3], pack("F32", [(i - 2) * 0.25 for i in range(6)]))
    t["a.f32"] = ("F32", [2], pack("F32", [1.5, -0.5]))
    t["alpha"] = ("F32", [], pack("F32", [0.75]))
    t["empty"] = ("F32", [0, 4], b"")
    t["w.f16"] = ("F16", [3], pack("U16", [0x3C00, 0xC000, 0x3555]))
    t["w.bf16"] = ("BF16", [2, 2], pack("U16", [0x3F80, 0xBF80, 0x4049, 0x0000]))
    t["idx.i64"] = ("I64", [2], pack("I64", [-5, 1 << 40]))
    t["img.u8"] = ("U8", [5], pack("U8", [0, 1, 127, 128, 255]))
    t["mask"] = ("BOOL", [3], pack("BOOL", [True, False, True]))
    t["d.f64"] = ("F64", [2], pack("F64", [0.1, -2.5]))
    t["count"] = ("I32", [], pack("I32", [42]))
    t["b.i32"] = ("I32", [2], pack("I32", [-1, 7]))
    t["vit.cls_token"] = ("F32", [1, 1, 4], pack("F32", [0.0, 1.0, 2.0, 3.0]))
    return t


MIXED_META = {
    "emoe.version": "1",
    "data.classes": "cat\ndog",
    "escapes": 'say "hi" \\ a/b\ttab\r\x08\x0c\x01\x1f\x7f end',
    "unicode": "\u00e9\u65e5\u672c\U0001F600",
    "empty": "",
}


def main(outdir):
    def write(name, blob):
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(blob)

    write("st_mixed.safetensors", serialize(mixed_tensors(), MIXED_META))
    small = {"y": ("U8", [3], pack("U8", [1, 2, 3])),
             "x": ("F32", [2], pack("F32", [1.0, 2.0]))}
    write("st_nometa.safetensors", serialize(small, None))
    write("st_emptymeta.safetensors", serialize(small, {}))
    write("st_notensors.safetensors", serialize({}, None))

    # A file from some other writer: pretty JSON, header order unlike data order,
    # an odd header length (no padding), so F32 data is misaligned, and an
    # extra key in a tensor entry (serde ignores unknown fields).
    hdr = {"z": {"dtype": "F32", "shape": [2], "data_offsets": [3, 11],
                 "extra": [1, {"a": None}]},
           "__metadata__": {"k": "v"},
           "first": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]}}
    text = json.dumps(hdr, indent=1).encode("utf-8")
    if len(text) % 2 == 0:
        text += b"\n"
    data = pack("U8", [9, 8, 7]) + pack("F32", [0.5, -4.0])
    write("st_loose.safetensors", struct.pack("<Q", len(text)) + text + data)


if __name__ == "__main__":
    main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures"))
