package agentcred

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestAnAssertionVerifiesForItsAudienceWithinItsWindowOnly(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	tok, err := k.Assert("c1", "flotilla", now)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Verify(tok, "flotilla", now.Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if a.Cluster != "c1" || a.ID == "" || !bytes.Equal(a.Public, k.Public()) || Hash(a.Public) != Hash(k.Public()) {
		t.Fatalf("verified assertion = %+v", a)
	}
	again, _ := k.Assert("c1", "flotilla", now)
	if b, _ := Verify(again, "flotilla", now); b.ID == a.ID {
		t.Error("two assertions share a jti")
	}
	for name, c := range map[string]struct {
		tok, aud string
		at       time.Time
		want     string
	}{
		"another server":     {tok, "other", now, "another server"},
		"after it expired":   {tok, "flotilla", now.Add(MaxLife + Leeway + time.Second), "time window"},
		"before it was made": {tok, "flotilla", now.Add(-Leeway - time.Second), "time window"},
		"garbage":            {"not.a.jwt", "flotilla", now, "malformed"},
		"too long":           {strings.Repeat("a", MaxBytes+1), "flotilla", now, "at most"},
		"altered":            {tok[:len(tok)-4] + "AAAA", "flotilla", now, "signature"},
		"signed by another":  {resign(t, tok), "flotilla", now, "signature"},
		"an access token":    {accessToken(t, k), "flotilla", now, "typ"},
		"an overlong window": {longLived(t, k, now), "flotilla", now, "longer than"},
	} {
		if _, err := Verify(c.tok, c.aud, c.at); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.want)
		}
	}
}

// resign swaps the key claim for another key's while keeping the signature.
func resign(t *testing.T, tok string) string {
	t.Helper()
	other, _ := Generate()
	forged, _ := other.Assert("c1", "flotilla", time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC))
	parts, fparts := strings.Split(tok, "."), strings.Split(forged, ".")
	return fparts[0] + "." + fparts[1] + "." + parts[2]
}

func accessToken(t *testing.T, k Key) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"sub": "c1", "aud": "flotilla", "exp": time.Now().Add(time.Minute).Unix()}).SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func longLived(t *testing.T, k Key, now time.Time) string {
	t.Helper()
	c := claims{RegisteredClaims: jwt.RegisteredClaims{Subject: "c1", Audience: jwt.ClaimStrings{"flotilla"}, ID: "x",
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}}
	c.Key = encodeKey(k)
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	tok.Header["typ"] = Type
	s, err := tok.SignedString(k.priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAKeySurvivesItsPEM(t *testing.T) {
	k, _ := Generate()
	back, err := ParsePEM(k.PEM())
	if err != nil || !bytes.Equal(back.Public(), k.Public()) {
		t.Fatalf("ParsePEM(PEM()) = %v, %v", back, err)
	}
	if _, err := ParsePEM([]byte("garbage")); err == nil {
		t.Error("garbage parsed as a key")
	}
	if err := CheckPublic(make([]byte, 31)); err == nil || !strings.Contains(err.Error(), "public_key") {
		t.Errorf("a short public key: %v", err)
	}
}
