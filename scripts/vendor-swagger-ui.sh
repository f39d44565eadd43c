#!/usr/bin/env bash
# Re-fetch the pinned Swagger UI behind `/docs` (npm's swagger-ui-dist, the Swagger UI
# team's own static build) into app/static/vendor/, checking the tarball's npm integrity
# hash and then every kept file against app/static/vendor/swagger-ui-dist-*/SHA256SUMS.
#
#   scripts/vendor-swagger-ui.sh            fetch VERSION, keep FILES, verify the sums
#   VERSION=5.36.0 scripts/vendor-swagger-ui.sh --update
#                                           another version: new folder, new sums (then
#                                           point app/static/docs.html at it, pin the
#                                           printed integrity below, drop the old folder)
set -euo pipefail

VERSION="${VERSION:-5.35.0}"
INTEGRITY="sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ=="
# what /docs loads, and the licence texts that must travel with it
FILES=(swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE)

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/app/static/vendor/swagger-ui-dist-$VERSION"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent --json "swagger-ui-dist@$VERSION" >pack.json)
got="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["integrity"])' "$tmp/pack.json")"
if [[ "${1:-}" != "--update" && "$got" != "$INTEGRITY" ]]; then
    echo "swagger-ui-dist@$VERSION: npm integrity $got, pinned $INTEGRITY" >&2
    exit 1
fi
tar -xzf "$tmp/swagger-ui-dist-$VERSION.tgz" -C "$tmp"
mkdir -p "$dest"
for f in "${FILES[@]}"; do
    cp "$tmp/package/$f" "$dest/$f"
done
cd "$dest"
if [[ "${1:-}" == "--update" ]]; then
    sha256sum "${FILES[@]}" >SHA256SUMS
    echo "$dest: new SHA256SUMS; npm integrity: $got"
else
    sha256sum --check --quiet SHA256SUMS
    echo "$dest: every file matches SHA256SUMS"
fi
