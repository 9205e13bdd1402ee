package agentcred

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
)

// Kinds of a cluster's credentials in the store (store.Credential.Kind).
// Onboarding issues a join token; Join trades it for a credential bound to
// the agent's key; revoking deletes every kind.
const (
	KindJoin      = "join"
	KindJoinForce = "join-force" // may replace a connected agent
	// KindAgent is the bearer credential of earlier versions: never
	// accepted any more; join and revoke delete it.
	KindAgent = "agent"
	// KindAgentKey is bound to the agent's public key: its hash is Hash of
	// the key.
	KindAgentKey = "agent-key"
)

// Kinds are the kinds of a cluster's agent credentials and join tokens.
func Kinds() []string { return []string{KindAgentKey, KindAgent, KindJoin, KindJoinForce} }

// joinTokenPrefix starts every join token, so that one found in a log or a
// paste is recognisable.
const joinTokenPrefix = "flj_"

// NewJoinToken returns a random join token and the hash the store keeps of
// it (HashToken).
func NewJoinToken() (token, hash string) {
	b := make([]byte, 32)
	rand.Read(b)
	token = joinTokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	return token, HashToken(token)
}

// HashToken is how the store names a join token: its hex SHA-256.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
