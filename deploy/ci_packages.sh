#!/usr/bin/env bash
# Install Debian packages that some slow tests need (CI runs this from .ci/run as root on Debian).
#   bash deploy/ci_packages.sh chromium [postgresql ...]
# Idempotent: does nothing when every package is already installed, so local runs stay fast. Needs
# root (or sudo) and apt-get; anywhere else it says so and fails, so the tests that need the package
# fail in CI rather than skip.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: bash deploy/ci_packages.sh PACKAGE..." >&2; exit 2; }
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
command -v apt-get >/dev/null || { echo "ci_packages: apt-get not found; install ${missing[*]} yourself" >&2; exit 1; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "ci_packages: installing ${missing[*]}" >&2
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
