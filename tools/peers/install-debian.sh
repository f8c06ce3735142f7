#!/usr/bin/env bash
# Install the Debian packages of the real peers the tests use: GStreamer's RTSP server with live
# test sources, run by the system python3 (python3-gi), as a camera not written by us
# (tools/peers/gst_rtsp_camera.py); FFmpeg as the client reading it; OpenSSH's sshd as the cloud
# relay of the tunnel tests (run on 127.0.0.1 with its own config, never the system service); and
# iproute2 for the network namespaces of the network watcher tests. Idempotent: it runs
# `apt-get update` (once) and `apt-get install` only if a package is missing.
set -euo pipefail

PACKAGES=(
  gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly
  gstreamer1.0-libav
  gstreamer1.0-tools
  python3-gi
  ffmpeg
  openssh-server
  openssh-client
  iproute2
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  # dpkg -s also succeeds for a removed package whose config remains: check the status line.
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-debian.sh: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

echo "install-debian.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
