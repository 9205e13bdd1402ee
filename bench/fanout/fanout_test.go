// Package fanout measures the central control plane's fan-out: how long from
// an API apply until every cluster's agent has acknowledged the new bundle,
// with 100 and 1,000 simulated agents. The agents are in-process clients on
// real loopback sockets (one HTTP/2 connection each) that acknowledge
// without a Kubernetes API, so what is measured is the server: store,
// recompute, per-cluster streams. Results are in docs/benchmarks.md.
//
//	go test -run '^$' -bench . -benchtime 50x ./bench/fanout/
package fanout

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"flotilla.io/flotilla/bench/internal/harness"
	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/internal/store/sqlite"
)

func h2c() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

// simAgent is a simulated agent: it acknowledges every bundle at once and
// reports the hostname marker of each bundle it acknowledged on seen.
type simAgent struct {
	name string
	seen chan string
}

func (a *simAgent) run(ctx context.Context, url string, cred harness.Sim, ready chan<- error) {
	client := agentv1connect.NewAgentServiceClient(h2c(), url, connect.WithGRPC())
	stream := client.Connect(ctx)
	stream.RequestHeader().Set("Authorization", cred.Header())
	if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: a.name, AgentVersion: "sim"}}}); err != nil {
		ready <- err
		return
	}
	ready <- nil
	for {
		msg, err := stream.Receive()
		if err != nil {
			return
		}
		b := msg.GetBundle()
		if b == nil {
			continue
		}
		ack := &agentv1.Ack{BundleVersion: b.GetVersion()}
		if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: ack}}); err != nil {
			return
		}
		// The content names the hostname of the change being measured.
		content := string(b.GetContent())
		if i := strings.Index(content, "host-"); i >= 0 {
			j := strings.IndexByte(content[i:], '"')
			select {
			case a.seen <- content[i : i+j]:
			case <-ctx.Done():
				return
			}
		}
	}
}

func benchmarkFanout(b *testing.B, clusters int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "flotilla.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	p := harness.Start(b, st)
	intent := harness.Tenancy("payments")
	for i := range clusters {
		intent = append(intent, harness.Resource("Cluster", &pb.Metadata{Name: fmt.Sprintf("c%d", i), Organization: "acme"}, nil))
	}
	if _, err := p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: intent})); err != nil {
		b.Fatal(err)
	}
	agents := make([]*simAgent, clusters)
	ready := make(chan error, clusters)
	for i := range clusters {
		name := fmt.Sprintf("c%d", i)
		tok, err := p.Fleet.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: name, Organization: "acme"}}))
		if err != nil {
			b.Fatal(err)
		}
		sim, err := harness.JoinAgent(ctx, p.Agent, name, tok.Msg.GetToken())
		if err != nil {
			b.Fatal(err)
		}
		agents[i] = &simAgent{name: name, seen: make(chan string, 16)}
		go agents[i].run(ctx, p.URL, sim, ready)
	}
	for range clusters {
		if err := <-ready; err != nil {
			b.Fatal(err)
		}
	}
	change := func(i int) time.Duration {
		marker := fmt.Sprintf("host-%d.example.com", i)
		start := time.Now()
		if _, err := p.API.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{harness.Gateway(marker, "payments")}})); err != nil {
			b.Fatal(err)
		}
		for _, a := range agents {
			for got := range a.seen {
				if got == marker {
					break
				}
			}
		}
		return time.Since(start)
	}
	harness.Measure(b, change) // the first change warms up: agents connect, informers settle
}

// BenchmarkFanout: one-object change to an IngressGateway every cluster
// selects, until all clusters' agents have the new bundle (and acked it).
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) { benchmarkFanout(b, n) })
	}
}
