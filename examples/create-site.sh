#!/bin/sh
# Create a site and report progress as agent events, the way the hand-written
# "site_operation" flows do. Run it through Muster so the agent gives it its
# event socket, either as a raw command:
#
#   muster run web-1 -- sh examples/create-site.sh --domain=example.com
#   muster events web-1 --follow
#
# or as the declared action create_site (see examples/agent.toml), which the
# agent runs as: create-site.sh --domain=DOMAIN --cache=true|false
#
# Each step publishes site.operation {operation, domain, status[, step][, error]}
# on the agent's channel, agent:web-1, where dashboards and services subscribe:
# status goes starting -> progress (once per step) -> completed, or failed.
#
# Options: --domain=DOMAIN (or DOMAIN alone), --cache=true|false (default true).
# Sites are created under $SITES_DIR (default /tmp/sites). The script runs
# muster as $MUSTER_BIN if set, else from PATH.
set -u
usage="usage: create-site.sh --domain=DOMAIN [--cache=true|false]"
domain=""
cache=true
for arg in "$@"; do
    case $arg in
        --domain=*) domain=${arg#--domain=} ;;
        --cache=*) cache=${arg#--cache=} ;;
        -*) echo "create-site.sh: unknown option $arg; $usage" >&2; exit 2 ;;
        *) domain=$arg ;;
    esac
done
# Checked here too, for raw runs: the domain becomes a directory name.
case $domain in
    "" | .* | -* | *[!A-Za-z0-9.-]*) echo "create-site.sh: invalid domain; $usage" >&2; exit 2 ;;
esac
case $cache in
    true | false) ;;
    *) echo "create-site.sh: --cache must be true or false" >&2; exit 2 ;;
esac
muster=${MUSTER_BIN:-muster}
site=${SITES_DIR:-/tmp/sites}/$domain

# A JSON string's content: quotes and backslashes escaped, control characters dropped.
json() {
    printf '%s' "$1" | tr -d '\000-\037' | sed 's/["\\]/\\&/g'
}

# emit STATUS [EXTRA_JSON_MEMBERS]
emit() {
    "$muster" emit site.operation \
        "{\"operation\":\"create\",\"domain\":\"$domain\",\"status\":\"$1\"${2:-}}"
}

# fail MESSAGE: reports the failure and exits.
fail() {
    emit failed ",\"error\":\"$(json "$(printf '%s' "$1" | head -c 200)")\""
    exit 1
}

emit starting
# Replace with the real work, e.g.: ee site create "$domain" --type=wp --cache
err=$(mkdir -p "$site" 2>&1) || fail "$err"
emit progress ",\"step\":\"files\""
err=$(printf 'domain=%s\ncache=%s\n' "$domain" "$cache" 2>&1 >"$site/site.conf") || fail "$err"
emit progress ",\"step\":\"config\""
emit completed ",\"cache\":$cache"
