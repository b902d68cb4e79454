#!/usr/bin/env bash
# Build the distributable artefacts into dist/ (or --out DIR): a stripped manylinux_2_17 abi3 wheel
# for this machine's architecture, checked by maturin's auditwheel step, and an sdist. Prints the
# wheel's name, size and tags. Needs cargo; everything else (maturin, and zig from the ziglang
# package to link against glibc 2.17 whatever the build machine's glibc is) goes into .venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=dist
while (($#)); do
    case "$1" in
        --out)
            out="${2:?wheel.sh: --out needs a directory}"
            shift 2
            ;;
        *)
            echo "usage: scripts/wheel.sh [--out DIR]" >&2
            exit 2
            ;;
    esac
done

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null; then
    echo "wheel.sh: $python not found; set PYTHON to a CPython >= 3.11" >&2
    exit 1
fi
if ! command -v cargo >/dev/null; then
    echo "wheel.sh: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi
.venv/bin/python -m pip install --quiet "maturin>=1.9.4,<2" "ziglang==0.15.2"

mkdir -p "$out"
# The directory holds exactly one build, so the wheel and sdist printed below are the ones just made.
rm -f "$out"/lazy_disk_cache-*.whl "$out"/lazy_disk_cache-*.tar.gz

# maturin runs zig (the ziglang package) through the python it finds first on PATH: the venv's.
PATH="$PWD/.venv/bin:$PATH" .venv/bin/maturin build --release --locked --strip \
    --zig --compatibility manylinux_2_17 --auditwheel check --out "$out"
.venv/bin/maturin sdist --out "$out"

.venv/bin/python - "$out" <<'EOF'
import sys
import zipfile
from pathlib import Path

out = Path(sys.argv[1])
(wheel,) = out.glob("lazy_disk_cache-*.whl")
(sdist,) = out.glob("lazy_disk_cache-*.tar.gz")
with zipfile.ZipFile(wheel) as archive:
    (wheel_info,) = [name for name in archive.namelist() if name.endswith(".dist-info/WHEEL")]
    tags = [line.split(":", 1)[1].strip() for line in archive.read(wheel_info).decode().splitlines() if line.startswith("Tag:")]
print(f"wheel: {wheel} ({wheel.stat().st_size:,} bytes, {wheel.stat().st_size / 1024**2:.2f} MiB)")
print(f"tags:  {', '.join(tags)}")
print(f"sdist: {sdist} ({sdist.stat().st_size:,} bytes)")
EOF
