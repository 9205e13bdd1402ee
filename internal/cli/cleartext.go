package cli

import (
	"fmt"
	"net/netip"
	"net/url"
	"strings"
)

// clearText reports whether a credential sent to server crosses a network
// unencrypted: an http:// URL whose host is not a loopback address
// (127.0.0.0/8, ::1) or localhost.
func clearText(server string) bool {
	u, err := url.Parse(strings.TrimSpace(server))
	if err != nil || u.Scheme != "http" {
		return false
	}
	host := u.Hostname()
	return host != "" && !loopbackHost(host)
}

// loopbackHost reports whether host is a loopback address (127.0.0.0/8,
// ::1) or localhost.
func loopbackHost(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// warnClearText warns once, on stderr, when the command sends a credential
// to a plain http:// server across a network.
func (e *env) warnClearText() {
	if e.warnedClearText || !clearText(e.server) {
		return
	}
	e.warnedClearText = true
	fmt.Fprintf(e.errOut, "warning: %s is plain http://: the credential travels in clear text; serve https:// (flotilla server --tls-cert and --tls-key) and use an https:// --server\n", e.server)
}
