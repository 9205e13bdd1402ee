package authn

import "testing"

func TestAnOIDCIdentityGetsAnEmailSubjectOnlyWhenTheProviderVerifiedIt(t *testing.T) {
	const iss = "https://idp.example.com"
	for _, tc := range []struct {
		name, sub, email string
		verified         bool
		want             string
	}{
		{"verified email", "123", "carol@example.com", true, "user:carol@example.com"},
		{"unverified email", "123", "carol@example.com", false, "user:https://idp.example.com#123"},
		{"no email", "123", "", true, "user:https://idp.example.com#123"},
		// A provider that lets a user name itself "admin" cannot make it the
		// bootstrap administrator.
		{"subject admin", "admin", "", false, "user:https://idp.example.com#admin"},
		{"verified non-address", "7", "admin", true, "user:https://idp.example.com#7"},
	} {
		got := OIDCSubject(iss, tc.sub, tc.email, tc.verified)
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
		if got == BootstrapSubject {
			t.Errorf("%s: an OIDC identity is the bootstrap administrator", tc.name)
		}
	}
}
