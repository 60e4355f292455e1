"""Regenerates the protobuf and gRPC code from proto/ into engine/pb: `python -m tools.proto`
(`make proto`).

protoc writes `from omnistock.v1 import ...`; the imports are rewritten to live under
engine.pb so that the generated code needs no sys.path tricks.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "engine" / "pb"
BIN = Path(sys.executable).parent
_IMPORT = re.compile(r"^from omnistock\.v1 import", re.MULTILINE)


def generate(out_dir: Path = OUT_DIR) -> list[Path]:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(out_dir.joinpath("omnistock", "v1").glob("*.py*"))
    for path in written:
        text = _IMPORT.sub("from engine.pb.omnistock.v1 import", path.read_text())
        path.write_text(text)
    for pkg in (out_dir / "omnistock", out_dir / "omnistock" / "v1"):
        (pkg / "__init__.py").touch()
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
