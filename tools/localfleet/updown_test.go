package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"flotilla.io/flotilla/tools/localfleet/internal/fleet"
	"flotilla.io/flotilla/tools/localfleet/internal/proc"
)

// The commands as a user runs them: `up --clusters 2 --istio` returns with
// every cluster's istiod ready and described in fleet.json; `down` leaves no
// process behind.
func TestUpWithIstioThenDownLeavesNoProcess(t *testing.T) {
	bin, err := filepath.Abs("../../bin")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"localfleet", "etcd", "kube-apiserver", "istio-crds.yaml", "istiod"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			t.Fatalf("%v: run `make fleet-istio` at the repository root first", err)
		}
	}
	dir := t.TempDir()
	lf := filepath.Join(bin, "localfleet")
	up := exec.Command(lf, "up", "--clusters", "2", "--istio", "--dir", dir)
	out, err := up.CombinedOutput()
	if err != nil {
		t.Fatalf("up: %v\n%s", err, out)
	}
	m, err := fleet.ReadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	pids := map[int]string{m.SupervisorPID: "localfleet"}
	down := func() {
		if out, err := exec.Command(lf, "down", "--dir", dir).CombinedOutput(); err != nil {
			t.Errorf("down: %v\n%s", err, out)
		}
	}
	downed := false
	defer func() {
		if !downed {
			down()
		}
	}()
	if len(m.Clusters) != 2 {
		t.Fatalf("fleet.json describes %d clusters, want 2", len(m.Clusters))
	}
	for _, c := range m.Clusters {
		for name, pid := range c.PIDs {
			pids[pid] = name
		}
		if c.Istiod == nil || c.PIDs["istiod"] == 0 {
			t.Fatalf("%s: no istiod in fleet.json: %+v", c.Name, c)
		}
		if !strings.Contains(string(out), c.Istiod.GRPC) {
			t.Errorf("up's output does not say where %s's istiod serves xDS (%s):\n%s", c.Name, c.Istiod.GRPC, out)
		}
		for _, addr := range []string{c.Istiod.HTTP, c.Istiod.GRPC, c.Istiod.Monitoring} {
			if !strings.HasPrefix(addr, "127.0.0.1:") {
				t.Errorf("%s: istiod listens on %s, not loopback", c.Name, addr)
			}
		}
		for _, path := range []string{"/ready", "/debug/registryz"} {
			resp, err := http.Get("http://" + c.Istiod.HTTP + path)
			if err != nil {
				t.Fatalf("%s: istiod %s: %v", c.Name, path, err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: istiod %s: %s", c.Name, path, resp.Status)
			}
		}
		if c.Network == "" {
			t.Errorf("%s: no network", c.Name)
		}
	}
	if m.Clusters[0].Network == m.Clusters[1].Network {
		t.Errorf("both clusters are on network %s", m.Clusters[0].Network)
	}
	down()
	downed = true
	if alive := proc.WaitGone(pids, 5*time.Second); len(alive) > 0 {
		t.Fatalf("processes %v outlived down", alive)
	}
}
