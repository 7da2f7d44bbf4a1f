#!/usr/bin/env bash
# Install the Debian packages daelab needs, only when missing:
#   data     dataset-fashion-mnist (the four IDX files in /usr/share/datasets/fashion-mnist)
#   browser  chromium (the report's browser test)
#   postgres postgresql (the server the sweep's PostgreSQL test starts in a temporary directory)
#   foreign  gcc-aarch64-linux-gnu and qemu-user (the C kernels built for and run on aarch64)
# As root it installs them; otherwise it prints the exact command to run and carries on.
set -u
what=${1:?usage: ensure-system-packages.sh data|browser|postgres|foreign}
case "$what" in
  data)
    [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && exit 0
    [ -n "${DAELAB_DATA:-}" ] && [ -d "$DAELAB_DATA" ] && exit 0
    pkg=dataset-fashion-mnist ;;
  browser)
    command -v chromium >/dev/null 2>&1 && exit 0
    pkg=chromium ;;
  postgres)
    command -v initdb >/dev/null 2>&1 && exit 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && exit 0
    pkg=postgresql ;;
  foreign)
    command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1 && exit 0
    pkg="gcc-aarch64-linux-gnu qemu-user" ;;
  *) echo "unknown: $what" >&2; exit 2 ;;
esac
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian package $pkg ..."
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086  # $pkg may name several packages
  if ! apt-get install -y -q $pkg >/tmp/daelab-apt.log 2>&1; then
    apt-get update -q >>/tmp/daelab-apt.log 2>&1
    # shellcheck disable=SC2086
    apt-get install -y -q $pkg >>/tmp/daelab-apt.log 2>&1 || {
      echo "could not install $pkg (see /tmp/daelab-apt.log)" >&2
      exit 0; }
  fi
else
  echo "missing Debian package $pkg: run  sudo apt-get update && sudo apt-get install -y $pkg" >&2
  exit 0
fi
