#!/usr/bin/env bash
# Creates (or refreshes) a separate Python 3.12 venv with LeRobot, used only to make and check the
# LeRobot interop fixtures (tests/fixtures/make_lerobot_fixtures.py, scripts/check_lerobot_load.py).
# It is NOT the project venv and NOT needed by the tests or CI. Idempotent: exits at once when
# VENV/.ready exists and lerobot imports with its dataset and diffusers extras.
# Usage: scripts/lerobot_venv.sh [VENV_DIR]   (~5 GB: torch with its CUDA wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-lerobot}
python=${PYTHON312:-python3.12}
# A pyenv shim answers `command -v` but fails to run unless 3.12 is selected: find the build.
if ! "$python" -c "" >/dev/null 2>&1 && command -v pyenv >/dev/null 2>&1; then
  for cand in "$(pyenv root)"/versions/3.12*/bin/python3.12; do
    [ -x "$cand" ] && python=$cand
  done
fi
lerobot_version=0.6.1

# dataset: pandas, pyarrow, datasets, torchcodec, jsonlines; diffusers: Diffusion Policy.
extras="dataset,diffusers-dep"
check="import lerobot, pandas, torchcodec, diffusers"
if [ -f "$venv/.ready" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
  echo "lerobot_venv: $venv is ready"
  exit 0
fi
rm -f "$venv/.ready"

# torchcodec (LeRobot's default video backend) loads Debian 12's FFmpeg 5.1 shared libraries.
source scripts/apt_missing.sh
apt_install_missing lerobot_venv libavcodec59 libavformat59 libavutil57 libswscale6 \
  libswresample4 libavdevice59 libavfilter8

if ! "$python" -c "" >/dev/null 2>&1; then
  echo "lerobot_venv: $python not found (lerobot >= 0.5 needs Python >= 3.12); set PYTHON312" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "lerobot[$extras]==$lerobot_version" 2>&1 | grep -v "^WARNING: Location" || true
"$venv/bin/python" -c "$check"  # a failed install stops here (set -e)
"$venv/bin/python" -c "import lerobot, sys
print('lerobot_venv: ok, lerobot', lerobot.__version__, 'python', sys.version.split()[0])"
touch "$venv/.ready"
