package fleet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// These benchmarks measure the numbers in docs/benchmarks.md ("Local fleet"):
//
//	make fleet-bench   (from the repository root)

// modes are the kinds of cluster: control plane only, with workloads, and
// with istiod.
var modes = []struct {
	name             string
	workloads, istio bool
}{{"control-plane", false, false}, {"workloads", true, false}, {"istio", false, true}}

// BenchmarkStartOneCluster measures the time from nothing to one cluster
// ready with Istio's CRDs Established (and, with workloads, its node Ready).
// Stopping is not timed.
func BenchmarkStartOneCluster(b *testing.B) {
	for _, mode := range modes {
		b.Run(mode.name, func(b *testing.B) {
			opts := testOptions(b, 1)
			opts.Workloads, opts.Istio = mode.workloads, mode.istio
			for b.Loop() {
				f, err := Start(context.Background(), opts)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				f.Stop()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkIdleClusterRSS reports the resident memory of each component of
// one cluster after 30 s of idling, and their sum, in MB (10^6 bytes).
func BenchmarkIdleClusterRSS(b *testing.B) {
	for _, mode := range modes {
		b.Run(mode.name, func(b *testing.B) {
			opts := testOptions(b, 1)
			opts.Workloads, opts.Istio = mode.workloads, mode.istio
			f, err := Start(context.Background(), opts)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Stop()
			time.Sleep(30 * time.Second)
			rss := map[string]float64{}
			total := 0.0
			for name, pid := range f.Manifest().Clusters[0].PIDs {
				mb, err := rssMB(pid)
				if err != nil {
					b.Fatal(err)
				}
				rss[name] = mb
				total += mb
			}
			for b.Loop() {
				// The measurement above is a single observation.
			}
			for name, mb := range rss {
				b.ReportMetric(mb, "MB-"+name)
			}
			b.ReportMetric(total, "MB-cluster")
		})
	}
}

// BenchmarkUpTwoClusters measures the wall time of `localfleet up
// --clusters 2` (and with --istio), the command a user runs; `down` is
// timed separately.
func BenchmarkUpTwoClusters(b *testing.B) {
	b.Run("control-plane", func(b *testing.B) { benchUp(b) })
	b.Run("istio", func(b *testing.B) { benchUp(b, "--istio") })
}

func benchUp(b *testing.B, flags ...string) {
	bin := binDir(b)
	exe := filepath.Join(bin, "localfleet")
	if _, err := os.Stat(exe); err != nil {
		b.Fatalf("%v: run `make fleet` at the repository root first", err)
	}
	var down time.Duration
	for b.Loop() {
		dir := b.TempDir()
		if out, err := exec.Command(exe, append([]string{"up", "--clusters", "2", "--dir", dir}, flags...)...).CombinedOutput(); err != nil {
			b.Fatalf("up: %v\n%s", err, out)
		}
		b.StopTimer()
		start := time.Now()
		if out, err := exec.Command(exe, "down", "--dir", dir).CombinedOutput(); err != nil {
			b.Fatalf("down: %v\n%s", err, out)
		}
		down += time.Since(start)
		b.StartTimer()
	}
	b.ReportMetric(down.Seconds()/float64(b.N), "s-down/op")
}

// rssMB returns the resident set size of pid in MB, from /proc/PID/status.
func rssMB(pid int) (float64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS of pid %d: %w", pid, err)
			}
			return float64(kb) * 1024 / 1e6, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
