#!/usr/bin/env bash
# Installs a free IP-to-country database for Beacon's GeoIP into
# tools/geoip/country.mmdb and prints its path; reuses it next time.
#
# The database comes from the npm registry: the pinned version of
# @ip-location-db/geo-whois-asn-country-mmdb (package CC0-1.0; data from the
# regional internet registries, CC BY 4.0 by the NRO), fetched with `npm pack`.
# `beacon up` finds tools/geoip/country.mmdb by itself; enrich.geoip_db points
# at any other MaxMind-DB file (GeoLite2 / DB-IP City) instead.
#
#   scripts/install-geoip.sh      # print the database's path
set -euo pipefail

PACKAGE="@ip-location-db/geo-whois-asn-country-mmdb"
VERSION="${GEOIP_DB_VERSION:-2.3.2026061719}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/tools/geoip"

if [ ! -f "$DEST/country.mmdb" ] || [ "$(cat "$DEST/VERSION" 2>/dev/null)" != "$VERSION" ]; then
    command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to fetch $PACKAGE" >&2; exit 1; }
    echo "installing $PACKAGE@$VERSION into $DEST (npm registry)" >&2
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
    tar -xzf "$work"/*.tgz -C "$work"
    [ -f "$work/package/geo-whois-asn-country.mmdb" ] \
        || { echo "error: $PACKAGE@$VERSION holds no geo-whois-asn-country.mmdb" >&2; exit 1; }
    mkdir -p "$DEST.partial"
    cp "$work/package/geo-whois-asn-country.mmdb" "$DEST.partial/country.mmdb"
    cp "$work/package/package.json" "$DEST.partial/package.json"
    [ -f "$work/package/NRO_LICENSE" ] && cp "$work/package/NRO_LICENSE" "$DEST.partial/"
    echo "$VERSION" > "$DEST.partial/VERSION"
    rm -rf "$DEST"
    mv "$DEST.partial" "$DEST"
fi
echo "$DEST/country.mmdb"
