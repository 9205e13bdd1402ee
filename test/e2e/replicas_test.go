package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/bundle"
	"flotilla.io/flotilla/internal/store/postgres/pgtest"
	"flotilla.io/flotilla/internal/testauth"
)

func h2cClient() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

// simAgent is a simulated agent: it acknowledges every bundle at once (each
// resource Applied, as an agent whose cluster takes everything would), and
// moves to the next server replica when its stream fails, as the real
// agent does. server says which replica its live stream is on.
type simAgent struct {
	name string
	key  agentcred.Key
	aud  string
	urls []string

	mu     sync.Mutex
	server string
}

func (a *simAgent) on() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.server
}

func (a *simAgent) run(ctx context.Context) {
	var last *agentv1.Ack
	for i := 0; ctx.Err() == nil; i++ {
		url := a.urls[i%len(a.urls)]
		stream := agentv1connect.NewAgentServiceClient(h2cClient(), url, connect.WithGRPC()).Connect(ctx)
		assertion, err := a.key.Assert(a.name, a.aud, time.Now())
		if err != nil {
			panic(err)
		}
		stream.RequestHeader().Set("Authorization", "Bearer "+assertion)
		if err := stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: a.name, AgentVersion: "sim", Last: last}}}); err == nil {
			a.mu.Lock()
			a.server = url
			a.mu.Unlock()
			for {
				msg, err := stream.Receive()
				if err != nil {
					break
				}
				if b := msg.GetBundle(); b != nil && b.GetParts() <= 1 {
					last = &agentv1.Ack{BundleVersion: b.GetVersion(), Revision: b.GetRevision()}
					var content bundle.Bundle
					if json.Unmarshal(b.GetContent(), &content) != nil {
						break
					}
					for _, o := range content.Objects {
						last.Resources = append(last.Resources, &agentv1.ResourceStatus{Fqn: o.FQN, State: "Applied", Message: "simulated"})
					}
					if stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Ack{Ack: last}}) != nil {
						break
					}
				}
			}
		}
		stream.CloseRequest()
		a.mu.Lock()
		a.server = ""
		a.mu.Unlock()
		select { // both replicas may be down: do not spin
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// connectedAgents reads flotilla_central_connected_agents from a server.
func connectedAgents(t *testing.T, s *server) int {
	t.Helper()
	resp, err := s.authGet("/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "flotilla_central_connected_agents "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return -1
}

func TestKillingAReplicaMovesEveryAgentToTheOtherAndLosesNothing(t *testing.T) {
	const sims = 200
	db := pgtest.NewDatabase(t)
	// The test is the simulated agents' proxy: each joins from an address
	// of its own, as a fleet would (the per-client limit of Join).
	a := startServer(t, t.TempDir(), "--store", db, "--trusted-proxy", "127.0.0.0/8")
	b := startServer(t, t.TempDir(), "--store", db, "--trusted-proxy", "127.0.0.0/8")
	b.login(bootstrapFile(a.cmd.Dir)) // the store has one bootstrap credential: a made it
	cs := clusters(t)
	for _, c := range cs {
		c.reset(t, "payments")
		c.runWorkloads(t, quickstartWorkloads(8080)...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The quickstart plus 200 simulated clusters, all selected by its group.
	var extra strings.Builder
	for i := range sims {
		fmt.Fprintf(&extra, "---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: s%03d, organization: acme}\n", i)
	}
	if r := a.flotilla(quickstart(t, "shop.example.com", 8080)+extra.String(), "apply", "-f", "-"); r.code != 0 {
		t.Fatalf("apply: %+v", r)
	}

	// Real agents for c1 and c2 and most simulated ones start on replica a.
	dir := t.TempDir()
	for _, c := range cs {
		token := strings.TrimSpace(a.must("cluster", "onboard", c.name))
		if err := os.WriteFile(filepath.Join(dir, c.name+".token"), []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		startProcess(t, dir, nil, "agent", "--server", a.url+","+b.url, "--cluster", c.name, "--token-file", filepath.Join(dir, c.name+".token"), "--kubeconfig", c.kubeconfig)
	}
	fleetA := flotillav1alpha1connect.NewFleetServiceClient(http.DefaultClient, a.url, testauth.Bearer(a.token))
	agentA := agentv1connect.NewAgentServiceClient(h2cClient(), a.url, connect.WithGRPC())
	agents := make([]*simAgent, sims)
	for i := range sims {
		name := fmt.Sprintf("s%03d", i)
		tok, err := fleetA.Onboard(ctx, connect.NewRequest(&pb.OnboardRequest{Metadata: &pb.Metadata{Name: name, Organization: "acme"}}))
		if err != nil {
			t.Fatal(err)
		}
		key, err := agentcred.Generate()
		if err != nil {
			t.Fatal(err)
		}
		join := connect.NewRequest(&agentv1.JoinRequest{Cluster: name, Token: tok.Msg.GetToken(), PublicKey: key.Public()})
		join.Header().Set("X-Forwarded-For", fmt.Sprintf("10.0.%d.%d", i/250, i%250+1))
		joined, err := agentA.Join(ctx, join)
		if err != nil {
			t.Fatal(err)
		}
		urls := []string{a.url, b.url}
		if i%4 == 3 {
			urls = []string{b.url, a.url}
		}
		agents[i] = &simAgent{name: name, key: key, aud: joined.Msg.GetAudience(), urls: urls}
		go agents[i].run(ctx)
	}
	// Every cluster converges; replica b answers for the clusters replica a
	// serves (it reads their status back from the store).
	b.must("status", "ingressgateway", "shop", "--wait", "--timeout", "50s")
	eventually(t, 30*time.Second, "agents on both replicas", func() error {
		if n, m := connectedAgents(t, a), connectedAgents(t, b); n+m != sims+2 || n < sims/2 {
			return fmt.Errorf("a has %d agents, b %d", n, m)
		}
		return nil
	})
	before := b.must("get", "ingressgateway", "shop", "-o", "yaml")

	a.kill9()
	killed := time.Now()
	eventually(t, 10*time.Second, "every agent on replica b", func() error {
		if n := connectedAgents(t, b); n != sims+2 {
			return fmt.Errorf("b has %d of %d agents", n, sims+2)
		}
		for _, s := range agents {
			if s.on() != b.url {
				return fmt.Errorf("%s is on %q", s.name, s.on())
			}
		}
		return nil
	})
	moved := time.Since(killed)
	t.Logf("every agent moved to replica b %s after the kill", moved.Round(time.Millisecond))

	// Nothing acknowledged was lost: the intent, and every cluster's status.
	if after := b.must("get", "ingressgateway", "shop", "-o", "yaml"); after != before {
		t.Fatalf("the intent changed across the kill:\n%s\n---\n%s", before, after)
	}
	out := b.must("status", "ingressgateway", "shop", "-o", "json")
	var st struct {
		Aggregate string
		Clusters  []struct{ Cluster, State string }
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Aggregate != "READY" || len(st.Clusters) != sims+2 {
		t.Fatalf("status lost across the kill (%v):\n%s", err, out)
	}
	record(matrixRow{scenario: "one of two server replicas on PostgreSQL killed (kill -9); 2 real and 200 simulated agents",
		checked:  []string{"every agent moves to the other replica", "intent and every cluster's status intact", "status --wait truthful after the move"},
		recovery: moved, how: "kill → all 202 agents streaming from the surviving replica"})
	// Status stays truthful: after each change, status --wait returns only
	// once the change is live in the real clusters.
	for i := range 3 {
		host := fmt.Sprintf("moved%d.example.com", i)
		if r := b.flotilla(quickstart(t, host, 8080), "apply", "-f", "-"); r.code != 0 {
			t.Fatalf("apply: %+v", r)
		}
		b.must("status", "ingressgateway", "shop", "--wait", "--timeout", "60s")
		for _, c := range cs {
			vs, err := c.get(vsGVR, "payments", "shop-shop")
			if err != nil || vsHost(vs) != host {
				t.Fatalf("%s: status --wait returned before the change was live: %q (%v)", c.name, vsHost(vs), err)
			}
		}
	}
	analyzeClusters(t, cs...)
}
