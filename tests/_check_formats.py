"""Parses files with Python's own parsers, independent of the project's code: tests/output_formats_test.ts.

    python3 tests/_check_formats.py <kind> <file>...

kind: xml (xml.etree; the root must be an SVG), json (json, NaN and Infinity refused), yaml (PyYAML safe_load_all,
when installed), safetensors (the format's header: 8-byte little-endian length, a JSON object of tensors with known
dtypes and shapes whose data_offsets tile the data exactly, __metadata__ string to string). Prints one line
`<file>: <problem>` per file that does not parse; exit 0 either way (the test reads the lines).
"""
import json
import struct
import sys
import xml.etree.ElementTree as ET

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "U16": 2, "U32": 4, "U64": 8}


def no_constants(name):
    raise ValueError(f"{name} is not JSON")


def check_xml(path):
    root = ET.parse(path).getroot()
    if root.tag != "{http://www.w3.org/2000/svg}svg":
        raise ValueError(f"root element {root.tag}, not an SVG")


def check_json(path):
    with open(path, encoding="utf-8") as f:
        json.load(f, parse_constant=no_constants)


def check_yaml(path):
    import yaml  # noqa: PLC0415 (optional: PyYAML may be missing)
    with open(path, encoding="utf-8") as f:
        docs = list(yaml.safe_load_all(f))
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise ValueError("expected one or more mappings")


def check_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError(f"header length {n} beyond the file")
    header = json.loads(data[8:8 + n].decode("utf-8"), parse_constant=no_constants)
    body = len(data) - 8 - n
    meta = header.pop("__metadata__", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("__metadata__ is not string to string")
    spans = []
    for name, t in header.items():
        if t["dtype"] not in DTYPE_BYTES:
            raise ValueError(f"{name}: dtype {t['dtype']}")
        count = 1
        for d in t["shape"]:
            count *= d
        a, b = t["data_offsets"]
        if b - a != count * DTYPE_BYTES[t["dtype"]]:
            raise ValueError(f"{name}: {b - a} bytes for shape {t['shape']} {t['dtype']}")
        spans.append((a, b))
    spans.sort()
    end = 0
    for a, b in spans:
        if a != end:
            raise ValueError(f"data_offsets leave a gap or overlap at byte {end}")
        end = b
    if end != body:
        raise ValueError(f"tensors cover {end} of {body} data bytes")


CHECKS = {"xml": check_xml, "json": check_json, "yaml": check_yaml, "safetensors": check_safetensors}

if __name__ == "__main__":
    check = CHECKS[sys.argv[1]]
    for p in sys.argv[2:]:
        try:
            check(p)
        except ImportError as e:
            print(f"{p}: skipped ({e})")
        except Exception as e:  # noqa: BLE001 (any failure to parse is the finding)
            print(f"{p}: {type(e).__name__}: {e}")
