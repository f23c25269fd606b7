#!/usr/bin/env bash
# Installs Chromium (Debian package chromium) for the browser test of the custody report
# (tests/report/test_report_browser.py), unless it is already there. The test runs it headless
# with a private profile under a tmp path; nothing system-wide is configured here.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # A font of its own: without recommends, a bare image may have none and render no text.
  $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
fi
BROWSER="$(command -v chromium || command -v chromium-browser)"
# The Debian launcher script prints a shell warning on some systems; keep only the version.
printf '%s\n' "$("$BROWSER" --version 2>/dev/null | head -n 1)"
