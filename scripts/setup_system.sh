#!/usr/bin/env bash
# Install the system tools the test suite drives, from Debian, only those that are missing:
#   sshd + ssh        (openssh-server, openssh-client)  the ssh device is tested against a real sshd
#   chromium                                            the server's page runs in a real browser
#   node + npm        (nodejs, npm)                     scripts/build_web.sh vendors the page's runtimes
#   kotlinc + java    (kotlin, default-jdk-headless)    the Android app's pre-processing is compiled
# A tool already on the machine is left alone, whoever installed it: a Node.js that ships its own
# npm (NodeSource's) conflicts with Debian's npm package, so asking apt for both would fail.
# Needs root (or password-less sudo) only when something is missing.
set -euo pipefail

missing=()
{ command -v sshd || [ -x /usr/sbin/sshd ]; } >/dev/null || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v kotlinc >/dev/null || missing+=(kotlin)
command -v java >/dev/null || missing+=(default-jdk-headless)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "setup_system.sh: missing ${missing[*]}; install them as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "setup_system.sh: installing ${missing[*]} from Debian" >&2
"${sudo[@]}" apt-get update -q >/dev/null
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
