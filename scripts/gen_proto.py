"""Generate the Python code for proto/ into exchange/wire/ (run by `make proto`).

The .proto files are mapped under the virtual path exchange/wire/, so the generated
modules import each other as ``exchange.wire.v1...`` and live in one package of their
own. ``--out DIR`` writes elsewhere (the drift test compares a fresh generation with
the committed code).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto" / "exchange"
PACKAGE = "exchange/wire"


def generate(out: Path) -> list[Path]:
    """Generate into ``out`` (a directory standing for the repository root)."""
    target = out / PACKAGE
    if target.exists():
        for old in target.rglob("*_pb2*.py*"):
            old.unlink()
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    plugin_grpc = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    include = str(Path(protoc.__file__).parent / "_proto")
    for proto in protos:
        virtual = f"{PACKAGE}/{proto.relative_to(PROTO_ROOT).as_posix()}"
        args = [
            "protoc",
            f"-I{PACKAGE}={PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--plugin=protoc-gen-mypy_grpc={plugin_grpc}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            virtual,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto.relative_to(ROOT)}")
    written = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix in {".py", ".pyi"})
    for folder in {p.parent for p in written} | {target}:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated protobuf code: do not edit, run `make proto`."""\n')
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    args = parser.parse_args()
    files = generate(args.out)
    for path in files:
        print(path.relative_to(args.out))
    (args.out / PACKAGE / "py.typed").touch()
    shutil.rmtree(args.out / PACKAGE / "__pycache__", ignore_errors=True)


if __name__ == "__main__":
    main()
