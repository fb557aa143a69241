#!/usr/bin/env bash
# The tests use a Redis at 127.0.0.1:6379 (own key prefixes) and start private redis-servers:
# start one on 6379 if none answers; say how to install redis-server if it is missing.
set -euo pipefail
answers() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
if ! command -v redis-server >/dev/null 2>&1; then
  echo "ensure-redis: redis-server is not installed (the tests and the demo need it)." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y redis-server   macOS: brew install redis" >&2
  exit 1
fi
if answers; then exit 0; fi
echo "ensure-redis: starting redis-server on 127.0.0.1:6379 (no persistence)"
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
for _ in $(seq 50); do answers && exit 0; sleep 0.1; done
echo "ensure-redis: redis-server did not answer on 6379" >&2
exit 1
