// Package edge benchmarks the API's edge under an unauthenticated flood: a
// `flotilla server` child process (so that its memory is its own) takes
// waves of 1,000 concurrent Join requests, half with garbage tokens and
// half gzip bombs, while a client applies 100 writes a second. It reports
// the applies' latency, the server's memory, and whether every refusal was
// counted. Results are in docs/benchmarks.md.
//
//	go test -run '^$' -bench . -benchtime 5x -timeout 20m ./bench/edge/
package edge

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"flotilla.io/flotilla/bench/internal/harness"
	"flotilla.io/flotilla/bench/internal/quantile"
	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
	"flotilla.io/flotilla/internal/testauth"
)

// wave is the number of concurrent Join requests of one wave.
const wave = 1000

// bomb is gzip of 60 MiB of zeros: about 60 KB, under Join's 64 KiB body
// limit, so only the inflation cap stops it.
func bomb() []byte {
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for range 60 {
		zw.Write(zeros)
	}
	zw.Close()
	return b.Bytes()
}

// refusalsOf sums flotilla_api_refusals_total of procedure over its codes.
func refusalsOf(b *testing.B, srv *harness.Server, procedure string) float64 {
	return scrape(b, srv, func(line string) (float64, bool) {
		if !strings.HasPrefix(line, "flotilla_api_refusals_total{") || !strings.Contains(line, `procedure="`+procedure+`"`) {
			return 0, false
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		return v, err == nil
	})
}

// heapMiB is the server's go_memstats_heap_inuse_bytes in MiB.
func heapMiB(b *testing.B, srv *harness.Server) float64 {
	return scrape(b, srv, func(line string) (float64, bool) {
		v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes ")
		if !ok {
			return 0, false
		}
		f, err := strconv.ParseFloat(v, 64)
		return f / (1 << 20), err == nil
	})
}

// applyTimes reads the server's own count of Applies and of those that
// took at most 10 ms (flotilla_api_request_duration_seconds).
func applyTimes(b *testing.B, srv *harness.Server) (all, within10ms float64) {
	const proc = `procedure="` + flotillav1alpha1connect.ResourceServiceApplyProcedure + `"`
	all = scrape(b, srv, func(line string) (float64, bool) {
		if !strings.HasPrefix(line, "flotilla_api_request_duration_seconds_count{") || !strings.Contains(line, proc) {
			return 0, false
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		return v, err == nil
	})
	within10ms = scrape(b, srv, func(line string) (float64, bool) {
		if !strings.HasPrefix(line, "flotilla_api_request_duration_seconds_bucket{") || !strings.Contains(line, proc) || !strings.Contains(line, `le="0.01"`) {
			return 0, false
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		return v, err == nil
	})
	return all, within10ms
}

// scrape sums what pick takes from the lines of the server's /metrics.
func scrape(b *testing.B, srv *harness.Server, pick func(string) (float64, bool)) float64 {
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+srv.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := pick(sc.Text()); ok {
			sum += v
		}
	}
	return sum
}

// outcome counts a wave's answers.
type outcome struct {
	unauthenticated, bombRefused, limited, other atomic.Int64
}

func (o *outcome) String() string {
	return fmt.Sprintf("unauthenticated %d, bombs refused %d, rate limited or busy %d, other %d",
		o.unauthenticated.Load(), o.bombRefused.Load(), o.limited.Load(), o.other.Load())
}

// flood sends one wave: wave concurrent Joins, every other one a bomb;
// with distinct, each from an address of its own (X-Forwarded-For, which
// the server trusts from loopback), else all from the one loopback peer.
func flood(url string, client *http.Client, garbage, bombBody []byte, distinct bool, seq int, out *outcome) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range wave {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, h := garbage, http.Header{"Content-Type": {"application/proto"}}
			if i%2 == 1 {
				body = bombBody
				h.Set("Content-Encoding", "gzip")
			}
			if distinct {
				n := seq*wave + i
				h.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255))
			}
			req, _ := http.NewRequest(http.MethodPost, url+agentv1connect.AgentServiceJoinProcedure, bytes.NewReader(body))
			req.Header = h
			<-start
			resp, err := client.Do(req)
			if err != nil {
				out.other.Add(1)
				return
			}
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			switch {
			case resp.StatusCode == http.StatusUnauthorized:
				out.unauthenticated.Add(1)
			case strings.Contains(string(msg), "inflates past the limit"):
				out.bombRefused.Add(1)
			case resp.StatusCode == http.StatusTooManyRequests:
				out.limited.Add(1)
			default:
				out.other.Add(1)
			}
		}()
	}
	close(start)
	wg.Wait()
}

// TestMain runs the flood itself when the benchmark starts this binary
// as its flooder (FLOTILLA_BENCH_FLOOD_URL set): a process of its own,
// with GOMAXPROCS=1, so that the attacker's goroutines do not starve the
// benchmark's apply client, whose latency is what is measured (on a real
// network the attacker's CPU is not the server's).
func TestMain(m *testing.M) {
	url := os.Getenv("FLOTILLA_BENCH_FLOOD_URL")
	if url == "" {
		os.Exit(m.Run())
	}
	waves, _ := strconv.Atoi(os.Getenv("FLOTILLA_BENCH_FLOOD_WAVES"))
	distinct := os.Getenv("FLOTILLA_BENCH_FLOOD_DISTINCT") != ""
	garbage, _ := proto.Marshal(&agentv1.JoinRequest{Cluster: "c1", Token: "flj_" + strings.Repeat("x", 43), PublicKey: make([]byte, 32)})
	bombBody := bomb()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: wave}}
	if os.Getenv("FLOTILLA_BENCH_FLOOD_H2") != "" {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		client = &http.Client{Transport: &http.Transport{Protocols: p}}
	}
	out := &outcome{}
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n') // go
	for i := range waves {
		flood(url, client, garbage, bombBody, distinct, i, out)
	}
	fmt.Printf("%d %d %d %d\n", out.unauthenticated.Load(), out.bombRefused.Load(), out.limited.Load(), out.other.Load())
	os.Exit(0)
}

// flooder is the flood's child process (TestMain).
type flooder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startFlooder(b *testing.B, url string, waves int, distinct, h2 bool) *flooder {
	cmd := exec.Command(os.Args[0], "-test.run", "^$")
	// On one machine the attacker's process shares the cores with the
	// server and the measured client; at FLOTILLA_BENCH_FLOOD_NICE (e.g. 19)
	// the kernel runs it only when they wait, as if its CPU were another
	// host's. The server's own work for the flood (accepting, refusing,
	// closing) keeps its priority.
	if n := os.Getenv("FLOTILLA_BENCH_FLOOD_NICE"); n != "" {
		cmd = exec.Command("nice", "-n", n, os.Args[0], "-test.run", "^$")
	}
	cmd.Env = append(os.Environ(), "FLOTILLA_BENCH_FLOOD_URL="+url, "FLOTILLA_BENCH_FLOOD_WAVES="+strconv.Itoa(waves), "GOMAXPROCS=1")
	if distinct {
		cmd.Env = append(cmd.Env, "FLOTILLA_BENCH_FLOOD_DISTINCT=1")
	}
	if h2 {
		cmd.Env = append(cmd.Env, "FLOTILLA_BENCH_FLOOD_H2=1")
	}
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	f := &flooder{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	if line, err := f.out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		b.Fatalf("the flooder did not start: %q %v", line, err)
	}
	return f
}

// run starts the waves and waits for them; it returns the answers' counts.
func (f *flooder) run(b *testing.B) *outcome {
	fmt.Fprintln(f.stdin)
	line, err := f.out.ReadString('\n')
	if err != nil {
		b.Fatalf("the flooder: %v", err)
	}
	var u, bo, l, o int64
	if _, err := fmt.Sscan(line, &u, &bo, &l, &o); err != nil {
		b.Fatalf("the flooder said %q: %v", line, err)
	}
	f.cmd.Wait()
	out := &outcome{}
	out.unauthenticated.Store(u)
	out.bombRefused.Store(bo)
	out.limited.Store(l)
	out.other.Store(o)
	return out
}

// BenchmarkJoinFlood: b.N waves of 1,000 concurrent tokenless Joins (half
// garbage tokens, half gzip bombs), from one address or from 1,000, while
// an open loop applies 100 single-object writes a second (SQLite).
func BenchmarkJoinFlood(b *testing.B) {
	for _, from := range []string{"one-address", "distinct-addresses", "one-address-http2"} {
		b.Run(from, func(b *testing.B) {
			srv := harness.StartServer(b, b.TempDir())
			api := flotillav1alpha1connect.NewResourceServiceClient(http.DefaultClient, srv.URL, testauth.Bearer(srv.Token))
			ctx := context.Background()
			if _, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: harness.Tenancy("bench")[:2]})); err != nil {
				b.Fatal(err)
			}
			flooder := startFlooder(b, srv.URL, b.N, from == "distinct-addresses", from == "one-address-http2")

			// The applies: 100 a second, from before the first wave to after the last.
			var (
				mu      sync.Mutex
				quiet   []time.Duration // before the flood
				flooded []time.Duration // while waves run
				inFlood atomic.Bool
				errs    atomic.Int64
			)
			stop := make(chan struct{})
			var applies sync.WaitGroup
			applies.Add(1)
			go func() {
				defer applies.Done()
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					applies.Add(1)
					go func() {
						defer applies.Done()
						during := inFlood.Load()
						t0 := time.Now()
						_, err := api.Apply(ctx, connect.NewRequest(&pb.ApplyRequest{Resources: []*pb.Resource{
							harness.Resource("Tenant", &pb.Metadata{Name: "t", Organization: "acme"}, map[string]any{"displayName": fmt.Sprint(i)})}}))
						d := time.Since(t0)
						if err != nil {
							errs.Add(1)
							return
						}
						mu.Lock()
						if during && inFlood.Load() {
							flooded = append(flooded, d)
						} else if !during {
							quiet = append(quiet, d)
						}
						mu.Unlock()
					}()
				}
			}()
			time.Sleep(3 * time.Second) // the quiet baseline: 300 applies
			rssBefore, _ := srv.RSS()
			heapBefore := heapMiB(b, srv)
			counted0 := refusalsOf(b, srv, agentv1connect.AgentServiceJoinProcedure)
			all0, fast0 := applyTimes(b, srv)

			// Memory, sampled while the waves run.
			var heapPeak float64
			sampled := make(chan struct{})
			sampling := make(chan struct{})
			go func() {
				defer close(sampled)
				for {
					select {
					case <-sampling:
						return
					case <-time.After(500 * time.Millisecond):
					}
					if h := heapMiB(b, srv); h > heapPeak {
						heapPeak = h
					}
				}
			}()
			inFlood.Store(true)
			profiled := srv.Profile("profile", 5, "edge-"+from+".cpu")
			b.ResetTimer()
			out := flooder.run(b)
			b.StopTimer()
			inFlood.Store(false)
			all1, fast1 := applyTimes(b, srv)
			close(sampling)
			<-sampled
			close(stop)
			applies.Wait()
			time.Sleep(100 * time.Millisecond) // let the last refusal reach the counter before the scrape
			<-profiled
			counted := refusalsOf(b, srv, agentv1connect.AgentServiceJoinProcedure) - counted0
			rssAfter, rssPeak := srv.RSS()
			sent := float64(b.N * wave)
			b.Logf("%s: %d joins sent: %s; refusals counted %v; RSS %.0f MiB before, %.0f after, peak %.0f; heap in use %.0f MiB before, peak %.0f; applies failed %d",
				from, b.N*wave, out, counted, rssBefore, rssAfter, rssPeak, heapBefore, heapPeak, errs.Load())
			if counted != sent {
				b.Errorf("%v refusals counted for %v joins sent, every one refused", counted, sent)
			}
			harness.Report(b, flooded, 0, "")
			quantile.Report(b, "quiet-", append([]time.Duration(nil), quiet...))
			b.ReportMetric(rssPeak, "rss-peak-MiB")
			b.ReportMetric(rssPeak-rssBefore, "rss-growth-MiB")
			b.ReportMetric(heapPeak, "heap-peak-MiB")
			b.ReportMetric(float64(len(flooded)), "applies-in-flood")
			// The server's own view: the share of Applies it answered
			// within 10 ms while the waves ran (its histogram's bucket).
			if all1 > all0 {
				b.ReportMetric(100*(fast1-fast0)/(all1-all0), "server-within-10ms-%")
			}
		})
	}
}
