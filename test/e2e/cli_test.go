package e2e

import (
	"net"
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
