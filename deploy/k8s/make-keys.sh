#!/usr/bin/env bash
# Makes the inference and admin keys the base's secretGenerator reads (base/keys/, git-ignored).
# Keeps existing keys unless --rotate. Keys never go on a command line or into git.
set -euo pipefail
keys="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/base/keys"
rotate=0
if [ "${1:-}" = --rotate ]; then rotate=1; fi
mkdir -p "$keys"
chmod 700 "$keys"
umask 077
for name in inference-key admin-key; do
  if [ "$rotate" = 1 ] || [ ! -s "$keys/$name" ]; then
    head -c 48 /dev/urandom | base64 | tr -d '\n' >"$keys/$name.new"
    mv "$keys/$name.new" "$keys/$name"
    echo "wrote $keys/$name"
  else
    echo "kept $keys/$name"
  fi
done
