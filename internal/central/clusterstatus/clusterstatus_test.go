package clusterstatus

import (
	"encoding/json"
	"testing"
)

// Encode splices the kept resources' JSON in: the result is what
// encoding/json gives for the whole status, with or without other fields.
func TestEncodeSplicesTheKeptResourcesIntoTheStatus(t *testing.T) {
	res, _ := json.Marshal([]Resource{{FQN: "o/x", State: "Applied"}})
	for _, s := range []Status{
		{Connected: true, AgentVersion: "v1", Resources: res, Drift: []Drift{{Object: "VirtualService shop/x", Change: "modified"}}},
		{Resources: res}, // connected is false but always written
		{Connected: true},
	} {
		got, err := s.Encode()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(s)
		var a, b any
		if json.Unmarshal(got, &a) != nil || json.Unmarshal(want, &b) != nil {
			t.Fatalf("not JSON: %s", got)
		}
		ga, _ := json.Marshal(a)
		gb, _ := json.Marshal(b)
		if string(ga) != string(gb) {
			t.Fatalf("encoded %s, want %s", got, want)
		}
	}
}
