#!/usr/bin/env bash
# Installs SoftHSM2 (Debian package softhsm2: libsofthsm2.so + softhsm2-util) for the PKCS#11
# tests (tests/kms/test_pkcs11.py), unless it is already there. The tests make their own
# private SOFTHSM2_CONF and tokens under a tmp path; nothing system-wide is configured here.
set -euo pipefail
if ! command -v softhsm2-util >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends softhsm2 >/dev/null
fi
printf 'softhsm2-util %s\n' "$(softhsm2-util --version)"
