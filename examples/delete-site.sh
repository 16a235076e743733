#!/bin/sh
# Delete a site and report progress as agent events, like create-site.sh.
# Run it through Muster so the agent gives it its event socket, either as a
# raw command:
#
#   muster run web-1 -- sh examples/delete-site.sh --domain=example.com
#
# or as the declared action delete_site (see examples/agent.toml), which the
# agent runs as: delete-site.sh --domain=DOMAIN --keep-backup=true|false
#
# Each step publishes site.operation {operation, domain, status[, step][, error]}:
# status goes starting -> progress (once per step) -> completed, or failed.
#
# Options: --domain=DOMAIN (or DOMAIN alone), --keep-backup=true|false (default
# false: with true, the site's files are first archived to
# $BACKUPS_DIR/DOMAIN.tar.gz, default /tmp/site-backups). Sites live under
# $SITES_DIR (default /tmp/sites). The script runs muster as $MUSTER_BIN if
# set, else from PATH.
set -u
usage="usage: delete-site.sh --domain=DOMAIN [--keep-backup=true|false]"
domain=""
keep_backup=false
for arg in "$@"; do
    case $arg in
        --domain=*) domain=${arg#--domain=} ;;
        --keep-backup=*) keep_backup=${arg#--keep-backup=} ;;
        -*) echo "delete-site.sh: unknown option $arg; $usage" >&2; exit 2 ;;
        *) domain=$arg ;;
    esac
done
# Checked here too, for raw runs: the domain names a directory to remove.
case $domain in
    "" | .* | -* | *[!A-Za-z0-9.-]*) echo "delete-site.sh: invalid domain; $usage" >&2; exit 2 ;;
esac
case $keep_backup in
    true | false) ;;
    *) echo "delete-site.sh: --keep-backup must be true or false" >&2; exit 2 ;;
esac
muster=${MUSTER_BIN:-muster}
sites=${SITES_DIR:-/tmp/sites}
backups=${BACKUPS_DIR:-/tmp/site-backups}

# A JSON string's content: quotes and backslashes escaped, control characters dropped.
json() {
    printf '%s' "$1" | tr -d '\000-\037' | sed 's/["\\]/\\&/g'
}

# emit STATUS [EXTRA_JSON_MEMBERS]
emit() {
    "$muster" emit site.operation \
        "{\"operation\":\"delete\",\"domain\":\"$domain\",\"status\":\"$1\"${2:-}}"
}

# fail MESSAGE: reports the failure and exits.
fail() {
    emit failed ",\"error\":\"$(json "$(printf '%s' "$1" | head -c 200)")\""
    exit 1
}

emit starting
[ -d "$sites/$domain" ] || fail "no site $domain"
if [ "$keep_backup" = true ]; then
    err=$(mkdir -p "$backups" 2>&1 && tar -C "$sites" -czf "$backups/$domain.tar.gz" "$domain" 2>&1) ||
        fail "$err"
    emit progress ",\"step\":\"backup\""
fi
# Replace with the real work, e.g.: ee site delete "$domain" --yes
err=$(rm -rf "${sites:?}/$domain" 2>&1) || fail "$err"
emit progress ",\"step\":\"files\""
emit completed ",\"backup\":$keep_backup"
