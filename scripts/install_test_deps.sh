#!/usr/bin/env bash
# Install what the tests need on a fresh Debian machine: system packages for a virtual X server with
# Mesa OpenGL, a Python 3.11 virtual environment in .venv, the CPU build of PyTorch where none is
# installed, and the package with its test extras (and the slicer extra where its wheel exists). The README's
# test command runs pytest after it.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
SYSTEM_PACKAGES="xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libdbus-1-3 libfontconfig1
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
  libxcb-xinerama0 libxcb-xfixes0 libxcb-cursor0 libxcb-xkb1 libxkbcommon0"
missing=""
for pkg in $SYSTEM_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then "$PYTHON" -m venv .venv; fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of PyTorch, unless a torch is already there (a CUDA build on a GPU machine stays).
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
# The test extras, and Slicer's core libraries (the slicer-core wheel) for tests/test_slicer_scene.py; where
# no slicer-core wheel exists for this platform those tests skip, and the rest installs without it.
pip install -q ".[test,slicer]" || {
  echo "install_test_deps: the slicer extra did not install (no slicer-core wheel here?);" \
    "installing without it: tests/test_slicer_scene.py will be skipped" >&2
  pip install -q ".[test]"
}
