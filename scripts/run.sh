#!/usr/bin/env bash
# `make run`: the management plane on its embedded defaults (SQLite under
# ./flotilla-data), a local fleet of two real Kubernetes API servers with
# Istio's CRDs and an istiod each, and one agent per cluster. Ctrl-C stops everything it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin
run=$root/.run
fleet=$run/fleet
listen=${FLOTILLA_LISTEN:-127.0.0.1:8080}
url=http://$listen
export FLOTILLA_SERVER=$url
cd "$root"

# A previous run killed without Ctrl-C may have left its fleet up.
"$bin/localfleet" down --dir "$fleet" >/dev/null 2>&1 || true
mkdir -p "$run"

echo "starting a local fleet of two clusters, each with istiod, in $fleet ..."
"$bin/localfleet" up --clusters 2 --istio --dir "$fleet"

pids=()
cleanup() {
	trap - EXIT INT TERM
	echo
	echo "stopping ..."
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	"$bin/localfleet" down --dir "$fleet" || true
}
trap cleanup EXIT INT TERM

# The server writes the bootstrap administrator credential to
# flotilla-data/bootstrap-admin (mode 0600; never to the log). It lasts 24 h,
# so each demo start makes a new one (--reset-bootstrap-credential), which
# also ends the sessions of the last one.
# The built-in DNS (GSLB) answers on 127.0.0.1:8053 for the DNSZones with
# provider BUILTIN: dig @127.0.0.1 -p 8053 <hostname>.
# --gslb-allow-cidr: the demo's entry points (examples/gslb.yaml) are
# loopback addresses, which health checks reach only in an allowed range.
"$bin/flotilla" server --reset-bootstrap-credential --listen "$listen" --dns-listen "${FLOTILLA_DNS_LISTEN:-127.0.0.1:8053}" --gslb-allow-cidr 127.0.0.0/8 >>"$run/server.log" 2>&1 &
server=$!
pids+=("$server")
for _ in $(seq 1 100); do
	if curl -fsS "$url/readyz" >/dev/null 2>&1; then break; fi
	if ! kill -0 "$server" 2>/dev/null; then cat "$run/server.log" >&2; echo "flotilla server exited" >&2; exit 1; fi
	sleep 0.1
done

# Log this machine's CLI in as the administrator (context "local" in the
# client config file); later commands in any terminal use it.
"$bin/flotilla" login --context local --bootstrap-file "$root/flotilla-data/bootstrap-admin"
"$bin/flotilla" apply -f examples/fleet.yaml >/dev/null
if ! command -v kubectl >/dev/null; then
	echo "note: kubectl is not installed; create namespace 'payments' in each cluster yourself for the quickstart to land" >&2
fi
for c in c1 c2; do
	kubectl --kubeconfig "$fleet/$c.kubeconfig" create namespace payments >/dev/null 2>&1 || true
	"$bin/flotilla" cluster onboard "$c" 2>/dev/null >"$run/$c.token"
	"$bin/flotilla" agent --cluster "$c" --token-file "$run/$c.token" --kubeconfig "$fleet/$c.kubeconfig" 2>"$run/agent-$c.log" &
	pids+=($!)
done

cat <<MSG

Flotilla is up: the management plane at $url (logs in .run/), clusters c1 and
c2 in $fleet, and one agent per cluster. The CLI is logged in as the
bootstrap administrator (context "local"; the credential is in
flotilla-data/bootstrap-admin). In another terminal:

  export PATH=$bin:\$PATH FLOTILLA_SERVER=$url

The web UI is at $url/ : log in with the credential in
flotilla-data/bootstrap-admin.

  flotilla apply -f examples/quickstart.yaml
  flotilla status ingressgateway shop --wait
  kubectl --kubeconfig $fleet/c1.kubeconfig -n payments get gateways.networking.istio.io,virtualservices.networking.istio.io

What each cluster's istiod made of it: its debug endpoints (/debug/configz,
/debug/registryz) are at the http addresses printed above.

Ctrl-C stops everything.
MSG
wait "$server"
