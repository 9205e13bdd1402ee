package apiserver_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "flotilla.io/flotilla/gen/flotilla/agent/v1"
	"flotilla.io/flotilla/gen/flotilla/agent/v1/agentv1connect"
	pb "flotilla.io/flotilla/gen/flotilla/v1alpha1"
	"flotilla.io/flotilla/gen/flotilla/v1alpha1/flotillav1alpha1connect"
)

// fuzzProcedures are what the fuzzer aims at: the tokenless procedures,
// a write, and the streams.
var fuzzProcedures = []string{
	agentv1connect.AgentServiceJoinProcedure,
	agentv1connect.AgentServiceConnectProcedure,
	flotillav1alpha1connect.IdentityServiceTokenProcedure,
	flotillav1alpha1connect.IdentityServiceGetLoginConfigProcedure,
	flotillav1alpha1connect.ResourceServiceApplyProcedure,
	flotillav1alpha1connect.FleetServiceWatchFleetProcedure,
}

// Fuzz flags: how the body is sent.
const (
	fuzzGRPC       = 1 << iota // gRPC framing (else the Connect protocol)
	fuzzGzip                   // declare gzip
	fuzzCompressed             // gRPC: mark the message compressed
	fuzzRawFrames              // gRPC: the body is the frames themselves
	fuzzToken                  // send the administrator's token
)

// FuzzTheAPIEdge sends bodies, gzip bombs and stream frames to the real
// server on a loopback socket. Whatever comes in, the server answers within
// its limits, says nothing of its store or internals, and keeps serving.
// The seeds run in every `go test`; `go test -fuzz FuzzTheAPIEdge` explores.
func FuzzTheAPIEdge(f *testing.F) {
	join, _ := proto.Marshal(&agentv1.JoinRequest{Cluster: "c1", Token: "flj_x", PublicKey: make([]byte, 32)})
	hello, _ := proto.Marshal(&agentv1.ConnectRequest{Msg: &agentv1.ConnectRequest_Hello{Hello: &agentv1.Hello{Cluster: "c1"}}})
	apply, _ := proto.Marshal(&pb.ApplyRequest{Resources: []*pb.Resource{res("Organization", md("acme"), nil)}})
	small := bomb(f, 4<<20)
	for _, seed := range []struct {
		proc, flags uint8
		body        []byte
	}{
		{0, 0, join},
		{0, fuzzGRPC, join},
		{0, fuzzGzip, small},
		{0, fuzzGRPC | fuzzGzip | fuzzCompressed, small},
		{0, 0, []byte("\xff\xff\xff\xff garbage")},
		{1, fuzzGRPC, hello},
		{1, fuzzGRPC | fuzzRawFrames, []byte{0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3}}, // a frame declaring 4 GiB
		{1, fuzzGRPC | fuzzRawFrames, []byte{0, 0, 0, 0}},                         // a truncated frame header
		{1, fuzzGRPC | fuzzGzip | fuzzCompressed, small},
		{2, 0, []byte(`{"grant":{}}`)},
		{3, fuzzGzip, []byte("not gzip at all")},
		{4, fuzzToken, apply},
		{4, fuzzToken | fuzzGzip, small},
		{5, fuzzGRPC | fuzzToken, []byte{}},
		{5, fuzzGRPC | fuzzToken | fuzzGzip | fuzzCompressed, small},
	} {
		f.Add(seed.proc, seed.flags, seed.body)
	}
	e := startEdge(f, nil)
	client := h2c()
	f.Fuzz(func(t *testing.T, proc, flags uint8, body []byte) {
		path := fuzzProcedures[int(proc)%len(fuzzProcedures)]
		h := http.Header{"Content-Type": {"application/proto"}}
		payload := body
		if flags&fuzzGRPC != 0 {
			h = http.Header{"Content-Type": {"application/grpc"}, "Te": {"trailers"}}
			if flags&fuzzRawFrames == 0 {
				payload = envelope(flags&fuzzCompressed != 0, body)
			}
		}
		if flags&fuzzGzip != 0 {
			if flags&fuzzGRPC != 0 {
				h.Set("Grpc-Encoding", "gzip")
			} else {
				h.Set("Content-Encoding", "gzip")
			}
		}
		if flags&fuzzToken != 0 {
			h.Set("Authorization", "Bearer "+e.token)
		}
		// A stream that is admitted stays open: its answer is read until
		// this ends (fuzzing takes an input over 10 s for a hang).
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		// Streams stay open while the client does: send the body, then end.
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url+path, bytes.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = h
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: no answer: %v", path, err)
		}
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		text := string(answer) + resp.Header.Get("Grpc-Message") + resp.Trailer.Get("Grpc-Message")
		if len(answer) > 64<<10 && path != flotillav1alpha1connect.FleetServiceWatchFleetProcedure {
			t.Errorf("%s: a %d-byte answer", path, len(answer))
		}
		for _, leak := range []string{"sqlite", "SQLITE", "database", "goroutine ", "panic", "runtime error"} {
			if strings.Contains(text, leak) {
				t.Errorf("%s: the answer says %q: %.300s", path, leak, text)
			}
		}
		if resp.StatusCode == http.StatusInternalServerError && !strings.Contains(text, "internal error (id ") && !strings.Contains(text, "protocol error") {
			t.Errorf("%s: 500 without a scrubbed message: %.300s", path, text)
		}
		hz, err := http.Get(e.url + "/healthz")
		if err != nil || hz.StatusCode != http.StatusOK {
			t.Fatalf("the server stopped serving after %s: %v", path, err)
		}
		hz.Body.Close()
	})
}
