package authn

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MaxAssertionLife bounds how far ahead a service-account assertion may
// expire: it is exchanged at once, so a stolen one is of little use.
const MaxAssertionLife = 10 * time.Minute

// ServiceAccountKeyFile is what `flotilla serviceaccount key create` saves:
// everything a machine needs to log in.
type ServiceAccountKeyFile struct {
	Account    string `json:"account"` // FQN of the service account
	KeyID      string `json:"keyId"`
	PrivateKey string `json:"privateKey"` // PEM, PKCS #8
}

// NewServiceAccountKey makes a key pair and returns its id, its public key
// (PEM, PKIX) and its private key (PEM, PKCS #8).
func NewServiceAccountKey() (id, publicPEM, privatePEM string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", "", "", err
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", "", "", err
	}
	sum := sha256.Sum256(pubDER)
	return hex.EncodeToString(sum[:8]),
		string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})),
		string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER})), nil
}

// ParsePublicKey reads a PEM (PKIX) Ed25519 public key.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New(`is not a PEM "PUBLIC KEY" block`)
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("is a %T key; service accounts use Ed25519", k)
	}
	return pub, nil
}

func parsePrivateKey(s string) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New(`the private key is not a PEM "PRIVATE KEY" block`)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("the private key is a %T key; service accounts use Ed25519", k)
	}
	return priv, nil
}

// ReadServiceAccountKeyFile reads a key file.
func ReadServiceAccountKeyFile(path string) (ServiceAccountKeyFile, error) {
	var f ServiceAccountKeyFile
	b, err := os.ReadFile(path)
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(b, &f); err != nil || f.Account == "" || f.KeyID == "" || f.PrivateKey == "" {
		return f, fmt.Errorf("%s is not a service-account key file (a JSON object with account, keyId and privateKey, as `flotilla serviceaccount key create` writes)", path)
	}
	return f, nil
}

// SignAssertion signs the assertion a service account exchanges for an
// access token at the server whose issuer is audience: iss and sub are the
// account, aud is audience, and it expires a minute after now.
func (f ServiceAccountKeyFile) SignAssertion(now time.Time, audience string) (string, error) {
	priv, err := parsePrivateKey(f.PrivateKey)
	if err != nil {
		return "", err
	}
	var jti [12]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.RegisteredClaims{
		Issuer: f.Account, Subject: f.Account, Audience: jwt.ClaimStrings{audience},
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute)),
		ID: base64.RawURLEncoding.EncodeToString(jti[:]),
	})
	tok.Header["kid"] = f.KeyID
	return tok.SignedString(priv)
}

// AssertionAccount reads, without verifying, which account and key an
// assertion claims, so the caller can look the key up.
func AssertionAccount(assertion string) (account, keyID string, err error) {
	var c jwt.RegisteredClaims
	tok, _, err := jwt.NewParser().ParseUnverified(assertion, &c)
	if err != nil {
		return "", "", errors.New("malformed service-account assertion: it is not a JWT")
	}
	keyID, _ = tok.Header["kid"].(string)
	if c.Subject == "" || keyID == "" {
		return "", "", errors.New("the service-account assertion names no account (sub) or key (kid)")
	}
	return c.Subject, keyID, nil
}

// ErrAssertion is the one answer to an assertion whose account, key or
// signature is wrong: the same for each, so that nobody learns from it
// which service accounts or keys exist.
var ErrAssertion = errors.New("the service-account assertion does not verify: no service account, key and signature of this server match it; check the key file (`flotilla serviceaccount key create` makes a new key)")

// VerifyAssertion checks an assertion's signature with pub and its claims,
// for the server whose issuer is audience.
func VerifyAssertion(assertion string, pub ed25519.PublicKey, now time.Time, audience string) error {
	var c jwt.RegisteredClaims
	_, err := jwt.NewParser(jwt.WithValidMethods([]string{jwt.SigningMethodEdDSA.Alg()}), jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithExpirationRequired(), jwt.WithLeeway(5*time.Second)).
		ParseWithClaims(assertion, &c, func(*jwt.Token) (any, error) { return pub, nil })
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid) || errors.Is(err, jwt.ErrTokenUnverifiable) || errors.Is(err, jwt.ErrTokenMalformed):
		return ErrAssertion
	case errors.Is(err, jwt.ErrTokenExpired):
		return errors.New("the service-account assertion expired: sign a new one (the CLI does so on every login)")
	case err != nil:
		return fmt.Errorf("the service-account assertion is refused: %v", err)
	case !slices.Contains(c.Audience, audience):
		return fmt.Errorf("the service-account assertion is for %v, not this server (%q): sign it for this server's issuer (the CLI reads it from GetLoginConfig)", []string(c.Audience), audience)
	case c.Issuer != c.Subject:
		return errors.New("the service-account assertion's iss and sub differ: both name the account")
	case c.ExpiresAt.Sub(now) > MaxAssertionLife:
		return fmt.Errorf("the service-account assertion lives too long: expire it within %s", MaxAssertionLife)
	}
	return nil
}

// NewSecret returns a random secret with a prefix and its stored hash.
func NewSecret(prefix string) (secret, hash string) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	secret = prefix + base64.RawURLEncoding.EncodeToString(b[:])
	return secret, HashSecret(secret)
}

// HashSecret is the stored form of a secret.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}
