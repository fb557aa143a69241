#!/usr/bin/env bash
# Install promtool (Debian package "prometheus", ~19 MB download) when it is missing,
# so tests/docker can validate the Prometheus config, alert rules and dashboard queries.
# Idempotent; needs root and apt-get. Tests skip the promtool checks if it is absent.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    echo "promtool present: $(promtool --version 2>&1 | head -n1)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_promtool: apt-get not available; install promtool by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d 101 keeps the package's postinst from starting a Prometheus server.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "promtool installed: $(promtool --version 2>&1 | head -n1)"
