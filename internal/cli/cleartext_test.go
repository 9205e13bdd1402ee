package cli

import (
	"bytes"
	"strings"
	"testing"
)

// A credential to a plain http:// server warns unless the server is on
// this machine (loopback, localhost); https:// never warns.
func TestClearTextIsPlainHTTPBeyondLoopback(t *testing.T) {
	for server, want := range map[string]bool{
		"http://192.0.2.1:1":                 true,
		"http://flotilla.example.com":        true,
		"HTTP://flotilla.example.com:8080/":  true,
		"http://10.0.0.5:8080":               true,
		"http://[2001:db8::1]:8080":          true,
		"http://localhost.example.com:8080":  true,
		"http://127.0.0.1:8080":              false,
		"http://127.4.5.6:8080":              false,
		"http://[::1]:8080":                  false,
		"http://[::ffff:127.0.0.1]:8080":     false,
		"http://localhost:8080":              false,
		"http://LocalHost.:8080":             false,
		"https://flotilla.example.com":       false,
		"https://192.0.2.1:8443":             false,
		"":                                   false,
		"not a URL with a :colon in its way": false,
	} {
		if got := clearText(server); got != want {
			t.Errorf("clearText(%q) = %v, want %v", server, got, want)
		}
	}
}

// The warning is one line, once per process, and names the way out.
func TestTheClearTextWarningIsOneLineOnce(t *testing.T) {
	var errOut bytes.Buffer
	e := &env{server: "http://192.0.2.1:8080", errOut: &errOut}
	e.warnClearText()
	e.warnClearText()
	got := errOut.String()
	if strings.Count(got, "\n") != 1 || !strings.Contains(got, "clear text") || !strings.Contains(got, "https://") || !strings.Contains(got, "--tls-cert") {
		t.Fatalf("warning: %q", got)
	}
	errOut.Reset()
	(&env{server: "https://192.0.2.1:8443", errOut: &errOut}).warnClearText()
	(&env{server: "http://127.0.0.1:8080", errOut: &errOut}).warnClearText()
	if errOut.Len() != 0 {
		t.Fatalf("https and loopback warned: %q", errOut.String())
	}
}
