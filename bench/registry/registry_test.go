// Package registry measures the fleet service registry at scale, against the
// real `flotilla server` binary run as a child process (so its memory is its
// own), with simulated agents in this process on real loopback sockets:
//
//   - N clusters (100 and 1,000), each reporting 100 services with ready
//     endpoints in two localities;
//   - fleet-wide, 10 endpoint changes per second, each a Runtime delta from
//     one simulated agent setting one service's ready count to a new value;
//   - per change, the time until FleetService.ListServices shows the new
//     count (the registry update as a reader sees it): p50 and p99;
//   - the server's RSS once every cluster's full report is in.
//
// Results are in docs/benchmarks.md.
//
//	go test -run '^$' -bench . -benchtime 200x -timeout 30m ./bench/registry/
package registry

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"flotilla.io/flotilla/bench/internal/harness"
	"flotilla.io/flotilla/bench/internal/quantile"
	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/testauth"
)

const (
	servicesPerCluster = 100
	changesPerSecond   = 10
	simsPerConn        = 100 // simulated agents per HTTP/2 connection
)

// sim is one simulated agent's stream, with the state it reported.
type sim struct {
	name   string
	mu     sync.Mutex
	stream *connect.BidiStreamForClient[agentv1.ConnectRequest, agentv1.ConnectResponse]
	seq    uint64
}

func service(i int, ready uint32) *agentv1.ServiceState {
	return &agentv1.ServiceState{
		Namespace: fmt.Sprintf("ns%02d", i%10), Name: fmt.Sprintf("svc%03d", i),
		Labels: map[string]string{"app": fmt.Sprintf("svc%03d", i)},
		Ports:  []*agentv1.ServicePort{{Name: "http", Port: 8080, Protocol: "TCP"}, {Name: "grpc", Port: 9090, Protocol: "TCP"}},
		Endpoints: []*agentv1.LocalityEndpoints{
			{Region: "region-1", Zone: "zone-1a", Ready: ready}, {Region: "region-1", Zone: "zone-1b", Ready: 2},
		},
	}
}

func (s *sim) send(m *agentv1.Runtime) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	m.Seq = s.seq
	return s.stream.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Runtime{Runtime: m}})
}

func BenchmarkRegistryUpdate(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("clusters=%d", n), func(b *testing.B) { benchRegistry(b, n) })
	}
}

func benchRegistry(b *testing.B, n int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := harness.StartServer(b, b.TempDir())
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	api := flotillav1alpha1connect.NewResourceServiceClient(client, srv.URL, testauth.Bearer(srv.Token))
	fleet := flotillav1alpha1connect.NewFleetServiceClient(client, srv.URL, testauth.Bearer(srv.Token))
	apply := func(rs []*pb.Resource) {
		if _, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: rs})); err != nil {
			b.Fatal(err)
		}
	}
	apply([]*pb.Resource{harness.Resource("Organization", &pb.Metadata{Name: "acme"}, nil)})
	name := func(i int) string { return fmt.Sprintf("c%05d", i) }
	var batch []*pb.Resource
	for i := range n {
		batch = append(batch, harness.Resource("Cluster", &pb.Metadata{Name: name(i), Organization: "acme"}, nil))
		if len(batch) == 500 || i == n-1 {
			apply(batch)
			batch = nil
		}
	}
	sims := make([]*sim, n)
	simulators := &harness.Simulators{URL: srv.URL, PerConn: simsPerConn}
	for i := range n {
		agentClient, cred := simulators.Join(ctx, b, fleet, name(i))
		st := agentClient.Connect(ctx)
		st.RequestHeader().Set("Authorization", cred.Header())
		if err := st.Send(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: name(i), AgentVersion: "sim"}}}); err != nil {
			b.Fatal(err)
		}
		go func() { // drain bundles and resyncs
			for {
				if _, err := st.Receive(); err != nil {
					return
				}
			}
		}()
		s := &sim{name: name(i), stream: st}
		full := &agentv1.Runtime{Full: true}
		for j := range servicesPerCluster {
			full.Services = append(full.Services, service(j, 3))
		}
		if err := s.send(full); err != nil {
			b.Fatal(err)
		}
		sims[i] = s
	}
	// Every cluster's full report is in when the last service lists all n.
	last := service(servicesPerCluster-1, 3)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		res, err := fleet.ListServices(ctx, connect.NewRequest(&pb.ListServicesRequest{Namespace: last.GetNamespace(), Name: last.GetName()}))
		if err == nil && len(res.Msg.GetServices()) == 1 && len(res.Msg.GetServices()[0].GetInstances()) == n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the full reports are not all in: %v %v", res, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // let the garbage collector settle before reading RSS
	rssMiB, _ := srv.RSS()
	rss := rssMiB * (1 << 20) / 1e6 // MB

	// Changes at 10/s fleet-wide; each is timed until a reader sees it.
	var lat []time.Duration
	tick := time.NewTicker(time.Second / changesPerSecond)
	defer tick.Stop()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		<-tick.C
		s := sims[(i*7919)%n]
		svc := (i * 31) % servicesPerCluster
		want := uint32(100 + i%1000)
		start := time.Now()
		if err := s.send(&agentv1.Runtime{Services: []*agentv1.ServiceState{service(svc, want)}}); err != nil {
			b.Fatal(err)
		}
		st := service(svc, want)
		for attempt := 0; ; attempt++ {
			res, err := fleet.ListServices(ctx, connect.NewRequest(&pb.ListServicesRequest{Namespace: st.GetNamespace(), Name: st.GetName()}))
			if err == nil && seen(res.Msg, "organizations/acme/clusters/"+s.name, want) {
				break
			}
			if attempt > 10000 {
				b.Fatalf("change %d never visible: %v", i, err)
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	quantile.Report(b, "", lat)
	b.ReportMetric(rss, "server-RSS-MB")
}

func seen(res *pb.ListServicesResponse, cluster string, ready uint32) bool {
	for _, s := range res.GetServices() {
		for _, in := range s.GetInstances() {
			if in.GetCluster() == cluster {
				for _, l := range in.GetEndpoints() {
					if l.GetZone() == "zone-1a" && l.GetReady() == ready {
						return true
					}
				}
			}
		}
	}
	return false
}
