# Sourced by scripts/setup.sh and scripts/lerobot_venv.sh:
#   apt_install_missing LABEL PKG...   installs those of the Debian packages not installed yet.
apt_install_missing() {
  local label=$1 pkg need=()
  shift
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  echo "$label: installing system packages: ${need[*]}"
  local sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
}
