package e2e

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

func TestStatusWaitAgainstAServerThatNeverAnswersTimesOutCleanly(t *testing.T) {
	// A listener that accepts and never answers: every status read is cut
	// by the wait's deadline (this once panicked the CLI).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	s := &server{t: t, url: "http://" + ln.Addr().String()}
	r := s.flotillaEnv([]string{"FLOTILLA_TOKEN=any"}, "", "status", "ingressgateway", "shop", "--org", "acme", "--tenant", "t", "--workspace", "w", "--group", "g", "--wait", "--timeout", "1s")
	if r.code != 1 || strings.Contains(r.stderr, "panic") || !strings.Contains(r.stderr, "within 1s") {
		t.Fatalf("status --wait against a silent server: exit %d\n%s", r.code, r.stderr)
	}
}

// --debug-listen serves Go's profiles on their own address, apart from the
// API (which does not serve them).
func TestDebugListenServesProfilesApartFromTheAPI(t *testing.T) {
	debug := freePort(t)
	s := startServer(t, t.TempDir(), "--debug-listen", debug)
	resp, err := http.Get("http://" + debug + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "goroutine profile") {
		t.Fatalf("profile: %s %.200s", resp.Status, body)
	}
	resp, err = http.Get(s.url + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "goroutine profile") {
		t.Fatal("the API port serves profiles")
	}
}
