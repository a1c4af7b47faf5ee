#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.sh needs on a lent GPU machine and its image lacks: Flower,
# Ray and their dependencies, pinned to the versions this checkout's .venv runs (Python 3.12
# builds; the image has Python 3.12 with torch, numpy, scikit-learn, pytest, rich and typer),
# and hypothesis for gpu_check.sh's test_pcg64.py.
# Nothing can be fetched there, so the wheels travel with the working tree in .whl/ (name `.whl`
# in the device call's carry) and gpu_check.sh installs them into /tmp/site first.
#
# A device call carries at most 64 MiB. Ray's wheel is 73 MB, 32 MB of it ray/jars/ray_dist.jar
# (Ray's Java workers, which Flower never starts): a copy of the wheel without the jar (and its
# RECORD lines), LZMA-compressed, is 32 MB. uv (flwr's runtime dependency installer, unused
# offline) is left out.
#
#   bash benchmarks/gpu_wheels.sh            # -> .whl/, about 57 MiB, a minute or two
set -euo pipefail
OUT=${OUT:-.whl}
PY=${PY:-.venv/bin/python}
NAMES="flwr ray cryptography cffi pycparser pycryptodome iterators tomli tomli-w grpcio
grpcio-health-checking protobuf alembic mako sqlalchemy greenlet fastapi starlette pydantic
pydantic-core annotated-types typing-inspection uvicorn prompt-toolkit wcwidth jsonschema
jsonschema-specifications referencing rpds-py hypothesis sortedcontainers attrs"
pins=()
for name in $NAMES; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  if [ -z "$version" ]; then
    echo "gpu_wheels.sh: $name is not installed in $PY's environment; run make test first" >&2
    exit 1
  fi
  pins+=("$name==$version")
done
mkdir -p "$OUT"
platforms=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
  manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64; do
  platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$OUT" "${pins[@]}"
"$PY" - "$OUT" <<'EOF'
"""Drop ray/jars/ from Ray's wheel (and from its RECORD), LZMA-compressed, in place."""
import pathlib
import sys
import zipfile

for wheel in pathlib.Path(sys.argv[1]).glob("ray-*.whl"):
    with zipfile.ZipFile(wheel) as source:
        if not any(i.filename.startswith("ray/jars/") for i in source.infolist()):
            continue
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_LZMA) as target:
            for info in source.infolist():
                if info.filename.startswith("ray/jars/"):
                    continue
                data = source.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(line for line in lines if not line.startswith("ray/jars/"))
                    data = data.encode()
                info.compress_type = zipfile.ZIP_LZMA
                target.writestr(info, data)
    slim.replace(wheel)
EOF
du -sh "$OUT"
