package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"flotilla.io/flotilla/internal/testfleet/xdsprobe"
)

// gatewayRoutes asserts, through the cluster's istiod, that the ingress
// gateway proxy of namespace payments (labels istio=ingressgateway) is told
// to route host to exactly the upstream clusters want; no want means no
// route at all. istiod takes a moment to see a change, so it asks again for
// up to 30 s.
func (c *kcluster) gatewayRoutes(t *testing.T, host string, want ...string) {
	t.Helper()
	if c.info.Istiod == nil {
		t.Fatalf("%s has no istiod: start the fleet with Istio", c.name)
	}
	p := xdsprobe.Proxy{Type: xdsprobe.Gateway, Namespace: "payments", Workload: "ingressgateway",
		Labels: map[string]string{"istio": "ingressgateway"}, Cluster: c.name, Network: c.info.Network,
		Region: c.info.Region, Zone: c.info.Zone}
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 0; attempt < 300 && time.Now().Before(deadline); attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		snap, err := xdsprobe.Fetch(ctx, c.info.Istiod.GRPC, p)
		cancel()
		if err != nil {
			last = err.Error()
		} else if got := snap.Upstreams(host); slices.Equal(got, want) {
			return
		} else {
			last = fmt.Sprintf("upstreams %v (domains %v)", got, snap.Domains())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: the gateway proxy's routes for %s are not %v: %s", c.name, host, want, last)
}

// istiodHas asserts that the cluster's istiod holds the object in its
// config store (/debug/configz): istiod read and accepted what the agent
// wrote.
func (c *kcluster) istiodHas(t *testing.T, kind, namespace, name string) {
	t.Helper()
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for attempt := 0; attempt < 300 && time.Now().Before(deadline); attempt++ {
		found, err := c.istiodConfig(kind, namespace, name)
		if err == nil && found {
			return
		}
		last = fmt.Sprint(found, err)
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: istiod does not hold %s %s/%s: %s", c.name, kind, namespace, name, last)
}

func (c *kcluster) istiodConfig(kind, namespace, name string) (bool, error) {
	resp, err := http.Get("http://" + c.info.Istiod.HTTP + "/debug/configz")
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("configz: %s %v", resp.Status, err)
	}
	var configs []struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(body, &configs); err != nil {
		return false, fmt.Errorf("configz: %w", err)
	}
	for _, cfg := range configs {
		if cfg.Kind == kind && cfg.Metadata.Namespace == namespace && cfg.Metadata.Name == name {
			return true, nil
		}
	}
	return false, nil
}
