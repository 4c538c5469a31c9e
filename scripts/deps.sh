# Sourced by scripts/demo and scripts/test: installs the Debian 12 packages
# tide needs when they are missing (as root or through sudo), or prints the
# exact apt line and stops.
TIDE_PACKAGES="build-essential cmake pkg-config liblua5.4-dev lua5.4 libuv1-dev libcurl4-openssl-dev libidn2-dev lua-busted
  libhttp-parser-dev lua-cjson lua-dkjson libedit-dev python3 nginx openssl"

tide_missing_packages() {
  local p missing=""
  for p in $TIDE_PACKAGES "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  echo "$missing"
}

tide_install_deps() {
  local missing
  missing=$(tide_missing_packages "$@")
  [ -z "$missing" ] && return 0
  echo "tide: installing missing packages:$missing" >&2
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo"
    else
      echo "tide: missing packages; run this, then try again:" >&2
      echo "  sudo apt-get install -y$missing" >&2
      exit 1
    fi
  fi
  $sudo apt-get update -qq >&2 || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >&2
}

tide_build() {
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTIDE_WERROR=ON "$@" >/dev/null
  cmake --build build -j"$(nproc)"
}
