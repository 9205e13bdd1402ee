// Package authn authenticates callers of the management plane. The server
// issues short-lived access tokens (JWTs signed with Ed25519 keys from a
// KeySet) in exchange for one of three credentials:
//
//	bootstrap credential ─┐
//	service-account assertion (signed with the account's key) ─┼─▶ Token ─▶ access token ─▶ every call
//	OIDC ID token (device-code login against the provider) ─┘
//
// The pure parts (keys, tokens, assertions) live here; the exchange that
// reads the store is in package apiserver.
package authn

import (
	"encoding/base64"
	"encoding/json"
)

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
