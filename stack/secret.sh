#!/usr/bin/env bash
# stack/secret.sh DIR NAME: print the path of the generated secret DIR/NAME, creating it on
# first use (32 random bytes, base64url, mode 0600, in a directory of mode 0700); an existing
# one is kept, so restarts and clients see the same secret. Knows nothing of what it is for.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 DIR NAME" >&2; exit 2; }
dir=$1 name=$2
case $name in */* | .* | '') echo "secret.sh: bad name '$name'" >&2; exit 2 ;; esac
umask 077
mkdir -p "$dir"
chmod 700 "$dir"
file=$dir/$name
if [ ! -s "$file" ]; then
  tmp=$(mktemp "$dir/.$name.XXXXXX")
  head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$tmp"
  mv "$tmp" "$file"
fi
chmod 600 "$file"
printf '%s\n' "$file"
