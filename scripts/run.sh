#!/usr/bin/env bash
# `make run`: the management plane on its embedded defaults (SQLite under
# ./flotilla-data) and a local fleet of two real Kubernetes API servers with
# Istio's CRDs. Ctrl-C stops everything it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin
fleet=$root/.run/fleet
listen=${FLOTILLA_LISTEN:-127.0.0.1:8080}
url=http://$listen

# A previous run killed without Ctrl-C may have left its fleet up.
"$bin/localfleet" down --dir "$fleet" >/dev/null 2>&1 || true

echo "starting a local fleet of two clusters in $fleet ..."
"$bin/localfleet" up --clusters 2 --dir "$fleet"

"$bin/flotilla" server --listen "$listen" &
server=$!
cleanup() {
	trap - EXIT INT TERM
	echo
	echo "stopping ..."
	kill -TERM "$server" 2>/dev/null || true
	wait "$server" 2>/dev/null || true
	"$bin/localfleet" down --dir "$fleet" || true
}
trap cleanup EXIT INT TERM

for _ in $(seq 1 100); do
	if curl -fsS "$url/readyz" >/dev/null 2>&1; then break; fi
	if ! kill -0 "$server" 2>/dev/null; then echo "flotilla server exited; see the log above" >&2; exit 1; fi
	sleep 0.1
done

cat <<MSG

Flotilla is up: management plane at $url, clusters c1 and c2 in $fleet.
Try, in another terminal:

  export PATH=$bin:\$PATH FLOTILLA_SERVER=$url
  flotilla apply -f examples/tenancy.yaml
  flotilla get workspaces
  flotilla audit
  kubectl --kubeconfig $fleet/c1.kubeconfig get crd virtualservices.networking.istio.io

Ctrl-C stops everything.
MSG
wait "$server"
