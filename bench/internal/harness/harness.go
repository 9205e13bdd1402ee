// Package harness starts what the benchmarks measure: the management plane
// and its central control plane, in process, on a real loopback socket, as
// `flotilla server` runs them. It also builds request objects and reports
// latency percentiles.
package harness

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	"flotilla.io/flotilla/bench/internal/quantile"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/apiserver"
	"flotilla.io/flotilla/internal/plane"
	"flotilla.io/flotilla/internal/resource"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/testauth"
)

// Plane is a running server and clients of it.
type Plane struct {
	URL   string
	Auth  *apiserver.Auth
	Token string // the bootstrap administrator's
	API   flotillav1alpha1connect.ResourceServiceClient
	Fleet flotillav1alpha1connect.FleetServiceClient
	Agent agentv1connect.AgentServiceClient
}

// Start serves st until the benchmark ends, with authentication and
// authorization on; the clients are the bootstrap administrator.
func Start(tb testing.TB, st store.Store) *Plane { return start(tb, st, false, false) }

// StartReplica is Start for one of several server replicas that share st
// (PostgreSQL), as `flotilla server` runs on a postgres:// store.
func StartReplica(tb testing.TB, st store.Store) *Plane { return start(tb, st, false, true) }

// StartWithoutAuth is Start with --insecure-no-auth: every caller is the
// administrator and no token is checked, for the figure without auth.
func StartWithoutAuth(tb testing.TB, st store.Store) *Plane { return start(tb, st, true, false) }

// As returns the plane's clients for another caller's token.
func (p *Plane) As(token string) *Plane {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	out := *p
	out.Token = token
	out.API = flotillav1alpha1connect.NewResourceServiceClient(client, p.URL, testauth.Bearer(token))
	out.Fleet = flotillav1alpha1connect.NewFleetServiceClient(client, p.URL, testauth.Bearer(token))
	return &out
}

// StartWithDNS is Start with the built-in DNS server (--dns-listen) at
// dnsAddr, whose health checks may reach loopback addresses
// (--gslb-allow-cidr 127.0.0.0/8): the benchmarks' entry points are there.
func StartWithDNS(tb testing.TB, st store.Store, dnsAddr string) *Plane {
	return startWith(tb, st, false, plane.Config{DNSListen: dnsAddr, GSLBAllow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
}

func start(tb testing.TB, st store.Store, insecure, shared bool) *Plane {
	return startWith(tb, st, insecure, plane.Config{Shared: shared})
}

func startWith(tb testing.TB, st store.Store, insecure bool, cfg plane.Config) *Plane {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	auth, token := testauth.New(tb)
	auth.Insecure = insecure
	cfg.API = append(cfg.API, apiserver.WithAuth(auth), TrustLoopback)
	p, err := plane.New(resource.Builtin(), st, log, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Run(ctx, ln); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
	url := "http://" + ln.Addr().String()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	return &Plane{
		URL: url, Auth: auth, Token: token,
		API:   flotillav1alpha1connect.NewResourceServiceClient(client, url, testauth.Bearer(token)),
		Fleet: flotillav1alpha1connect.NewFleetServiceClient(client, url, testauth.Bearer(token)),
		Agent: agentv1connect.NewAgentServiceClient(client, url),
	}
}

// Resource builds a request object.
func Resource(kind string, md *pb.Metadata, spec map[string]any) *pb.Resource {
	s, err := structpb.NewStruct(spec)
	if err != nil {
		panic(err)
	}
	return &pb.Resource{ApiVersion: resource.APIVersion, Kind: kind, Metadata: md, Spec: s}
}

// Tenancy is an organization "acme" with tenant t, workspace w and gateway
// group g, all selecting namespace ns in every cluster.
func Tenancy(ns string) []*pb.Resource {
	sel := map[string]any{"names": []any{"*/" + ns}}
	return []*pb.Resource{
		Resource("Organization", &pb.Metadata{Name: "acme"}, nil),
		Resource("Tenant", &pb.Metadata{Name: "t", Organization: "acme"}, nil),
		Resource("Workspace", &pb.Metadata{Name: "w", Organization: "acme", Tenant: "t"}, map[string]any{"namespaceSelector": sel}),
		Resource("Group", &pb.Metadata{Name: "g", Organization: "acme", Tenant: "t", Workspace: "w"}, map[string]any{"type": "gateway", "namespaceSelector": sel}),
	}
}

// GatewayFQN is the FQN of the IngressGateway that Gateway builds.
const GatewayFQN = "organizations/acme/tenants/t/workspaces/w/groups/g/ingressgateways/shop"

// Gateway is IngressGateway "shop" in group g serving host in namespace ns.
func Gateway(host, ns string) *pb.Resource {
	return Resource("IngressGateway", &pb.Metadata{Name: "shop", Organization: "acme", Tenant: "t", Workspace: "w", Group: "g"}, map[string]any{
		"workloadSelector": map[string]any{"namespace": ns, "labels": map[string]any{"istio": "ingressgateway"}},
		"http": []any{map[string]any{"name": "shop", "hostname": host, "port": 80, "routing": map[string]any{"rules": []any{
			map[string]any{"route": map[string]any{"host": ns + "/web." + ns + ".svc.cluster.local", "port": 8080}},
		}}}},
	})
}

// Report adds the latency quantiles of lat (quantile.Report) and, when elapsed is
// set, a rate to the benchmark's output. ns/op is zeroed: with concurrent
// clients it means nothing.
func Report(b *testing.B, lat []time.Duration, elapsed time.Duration, unit string) {
	quantile.Report(b, "", lat)
	if elapsed > 0 {
		b.ReportMetric(float64(len(lat))/elapsed.Seconds(), unit)
	}
	b.ReportMetric(0, "ns/op")
}

// Measure runs change once to warm up, then b.N times, and reports the
// latency percentiles of the measured runs.
func Measure(b *testing.B, change func(i int) time.Duration) {
	change(-1)
	lat := make([]time.Duration, b.N)
	b.ResetTimer()
	for i := range b.N {
		lat[i] = change(i)
	}
	b.StopTimer()
	Report(b, lat, 0, "")
}

// BootstrapToken exchanges the bootstrap credential a `flotilla server`
// wrote to dataDir for an access token, as `flotilla login` does.
func BootstrapToken(tb testing.TB, url, dataDir string) string {
	tb.Helper()
	secret, err := os.ReadFile(filepath.Join(dataDir, apiserver.BootstrapAdminFile))
	if err != nil {
		tb.Fatal(err)
	}
	res, err := flotillav1alpha1connect.NewIdentityServiceClient(http.DefaultClient, url).Token(context.Background(),
		connect.NewRequest(&pb.TokenRequest{Grant: &pb.TokenRequest_BootstrapCredential{BootstrapCredential: strings.TrimSpace(string(secret))}}))
	if err != nil {
		tb.Fatal(err)
	}
	return res.Msg.GetAccessToken()
}
