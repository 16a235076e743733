#!/bin/sh
# Create a site and report progress as agent events, the way the hand-written
# "site_operation" flows do. Run it through Muster so the agent gives it its
# event socket:
#
#   muster run web-1 -- sh examples/create-site.sh example.com
#   muster events web-1 --follow
#
# Each step publishes site.operation {operation, domain, status[, error]} on
# the agent's channel, agent:web-1, where dashboards and services subscribe.
set -u
domain=${1:?usage: create-site.sh DOMAIN}

emit() {
    muster emit site.operation "{\"operation\":\"create\",\"domain\":\"$domain\",\"status\":\"$1\"$2}"
}

emit starting ""
# Replace with the real work, e.g.: ee site create "$domain" --type=wp --cache
if mkdir -p "/tmp/sites/$domain" 2>/tmp/create-site.err; then
    emit completed ""
else
    emit failed ",\"error\":\"$(tr -d '"\\' </tmp/create-site.err | head -c 200)\""
    exit 1
fi
