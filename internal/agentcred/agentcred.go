// Package agentcred is an agent's key-bound credential, and the kinds and
// join tokens of a cluster's credentials in the store (kinds.go). The
// agent makes an Ed25519 key pair in its own cluster and keeps the private
// key there; the management plane stores only a hash of the public key,
// which Join binds to the cluster. Every stream the agent opens carries a fresh assertion
// signed with the private key, so what travels on the wire is good for one
// stream open, for two minutes, at one server:
//
//	agent: Generate ─▶ Secret{private key} ─▶ Join{token, public key} ─▶ server: credential{Hash(public key), cluster, expiry}
//	agent: Assert(cluster, audience) ─▶ Connect "Authorization: Bearer <assertion>" ─▶ server: Verify ─▶ credential by Hash(Key)
//
// The package is pure: no I/O, and the clock comes from the caller.
package agentcred

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Assertion limits. An assertion lives at most MaxLife; the server takes
// clocks that differ from its own by up to Leeway.
const (
	MaxLife  = 2 * time.Minute
	Leeway   = time.Minute
	MaxBytes = 2048 // an assertion is about 400 bytes
)

// Type is the assertion's JWT "typ": no other token of the system has it,
// so no access token or service-account assertion can pass for one.
const Type = "flotilla-agent+jwt"

// Key is an agent's private key.
type Key struct{ priv ed25519.PrivateKey }

// Generate makes a new key pair.
func Generate() (Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Key{}, fmt.Errorf("generate the agent's key: %w", err)
	}
	return Key{priv: priv}, nil
}

// FromSeed returns the key of a 32-byte seed (for simulated agents, which
// make thousands).
func FromSeed(seed []byte) Key { return Key{priv: ed25519.NewKeyFromSeed(seed)} }

// PEM encodes the private key (PKCS #8), as the agent stores it.
func (k Key) PEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		panic(err) // an Ed25519 key always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// ParsePEM reads a key that PEM wrote.
func ParsePEM(b []byte) (Key, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return Key{}, errors.New(`the agent's key is not a PEM "PRIVATE KEY" block`)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return Key{}, fmt.Errorf("the agent's key: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return Key{}, fmt.Errorf("the agent's key is a %T key; agents use Ed25519", k)
	}
	return Key{priv: priv}, nil
}

// Public is the public key, as JoinRequest carries it.
func (k Key) Public() ed25519.PublicKey { return k.priv.Public().(ed25519.PublicKey) }

// Hash is how the server names a credential bound to the public key pub:
// the hex SHA-256 of its 32 bytes.
func Hash(pub []byte) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:])
}

// CheckPublic says what is wrong with a public key from a request.
func CheckPublic(pub []byte) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("public_key has %d bytes; an Ed25519 public key has %d: upgrade the agent", len(pub), ed25519.PublicKeySize)
	}
	return nil
}

type claims struct {
	jwt.RegisteredClaims
	// Key is the signer's public key (base64url): the server finds the
	// credential by its hash, and verifies the signature with it.
	Key string `json:"key"`
}

// Assert returns an assertion, signed with k, that the agent of cluster (a
// name or FQN, as the agent was told) opens a stream to audience at now.
func (k Key) Assert(cluster, audience string, now time.Time) (string, error) {
	var jti [12]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	now = now.Truncate(time.Second)
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject: cluster, Audience: jwt.ClaimStrings{audience},
			IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(MaxLife)),
			ID: base64.RawURLEncoding.EncodeToString(jti[:]),
		},
		Key: encodeKey(k),
	})
	tok.Header["typ"] = Type
	return tok.SignedString(k.priv)
}

func encodeKey(k Key) string { return base64.RawURLEncoding.EncodeToString(k.Public()) }

// Assertion is a verified assertion.
type Assertion struct {
	Cluster string // as the agent named it: a name or an FQN
	ID      string // jti: the server takes each one once
	Expires time.Time
	Public  ed25519.PublicKey
}

// Verify checks an assertion's form, signature, audience and time window
// at now. It does not say whether the key is bound to a cluster: look the
// credential up by Hash(a.Public). Its errors say what is wrong, and hold
// nothing secret.
func Verify(token, audience string, now time.Time) (Assertion, error) {
	if len(token) > MaxBytes {
		return Assertion{}, fmt.Errorf("the assertion has %d bytes; at most %d", len(token), MaxBytes)
	}
	var c claims
	var pub ed25519.PublicKey
	parser := jwt.NewParser(jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}), jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(Leeway), jwt.WithAudience(audience))
	_, err := parser.ParseWithClaims(token, &c, func(t *jwt.Token) (any, error) {
		if typ, _ := t.Header["typ"].(string); typ != Type {
			return nil, fmt.Errorf("its typ is %q, not %q", typ, Type)
		}
		b, err := base64.RawURLEncoding.DecodeString(c.Key)
		if err != nil || CheckPublic(b) != nil {
			return nil, errors.New("its key claim is not an Ed25519 public key")
		}
		pub = b
		return pub, nil
	})
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return Assertion{}, errors.New("malformed assertion: not a signed agent assertion")
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return Assertion{}, errors.New("the assertion is outside its time window: check the cluster's clock")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return Assertion{}, fmt.Errorf("the assertion is for another server (audience %v, this is %q): onboard the cluster to this server", []string(c.Audience), audience)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return Assertion{}, errors.New("the assertion's signature does not verify")
	case err != nil:
		return Assertion{}, fmt.Errorf("assertion refused: %w", err)
	}
	if c.IssuedAt == nil || c.ExpiresAt.Sub(c.IssuedAt.Time) > MaxLife {
		return Assertion{}, fmt.Errorf("the assertion lives longer than %s", MaxLife)
	}
	if c.ID == "" || c.Subject == "" {
		return Assertion{}, errors.New("the assertion names no cluster or has no id")
	}
	return Assertion{Cluster: c.Subject, ID: c.ID, Expires: c.ExpiresAt.Time, Public: pub}, nil
}
