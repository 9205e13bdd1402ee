package apiserver

import (
	"fmt"
	"testing"
)

func TestALimiterFullOfBusyKeysRefusesNewOnesAndGrowsNoFurther(t *testing.T) {
	l := newKeyLimiter()
	busy := Rate{PerSecond: 0.0001, Burst: 1}
	for i := range maxBuckets {
		if !l.allow(fmt.Sprint(i), busy) {
			t.Fatalf("key %d refused before the limiter was full", i)
		}
	}
	if l.allow("one more", busy) {
		t.Fatal("a new key was let through a full limiter of busy keys")
	}
	if len(l.buckets) != maxBuckets {
		t.Fatalf("the limiter holds %d keys, want at most %d", len(l.buckets), maxBuckets)
	}
	if l.allow("0", busy) {
		t.Fatal("a busy key got a second token")
	}
}

func TestClientsAreKeyedByAddressAndIPv6ByTheirSlash64(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7":           "203.0.113.7",
		"2001:db8:1:2:3:4:5:6":  "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1":  "2001:db8:1:2::/64",
		"not an address at all": "not an address at all",
	} {
		if got := clientKey(in); got != want {
			t.Errorf("clientKey(%q) = %q, want %q", in, got, want)
		}
	}
}
