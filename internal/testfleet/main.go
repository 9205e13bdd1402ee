package testfleet

import (
	"fmt"
	"os"
	"testing"
)

// pkgFleet is the fleet that Main started for this test package.
var pkgFleet *Fleet

// Main starts a fleet, runs the package's tests, stops the fleet and exits.
// Call it from TestMain; tests then reach the fleet with Get. If the fleet
// cannot start, Main prints why (naming `make fleet` when binaries are
// missing) and exits with status 1 without running any test.
func Main(m *testing.M, opts Options) {
	f, err := Start(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testfleet:", err)
		os.Exit(1)
	}
	pkgFleet = f
	code := m.Run()
	if err := f.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "testfleet: stop:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// Get returns the fleet started by Main, failing t if Main was not called
// from the package's TestMain.
func Get(t testing.TB) *Fleet {
	t.Helper()
	if pkgFleet == nil {
		t.Fatal("testfleet: no fleet; call testfleet.Main from TestMain")
	}
	return pkgFleet
}
