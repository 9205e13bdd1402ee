package agentauth

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"flotilla.io/flotilla/internal/agentcred"
	"flotilla.io/flotilla/internal/store"
	"flotilla.io/flotilla/internal/store/sqlite"
)

// A stream opens with a fresh assertion of a key whose credential the
// store holds: the same assertion twice is refused, an assertion for
// another cluster is refused, and a deleted credential stops a stream at
// its recheck.
func TestAnAssertionOpensOneStreamOfItsOwnClusterWhileItsCredentialStands(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "flotilla.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const fqn = "organizations/acme/clusters/c1"
	key, err := agentcred.Generate()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	hash := agentcred.Hash(key.Public())
	if err := st.Update(ctx, "test", func(tx store.Tx) error {
		return tx.PutCredential(ctx, store.Credential{Hash: hash, Cluster: fqn, Kind: agentcred.KindAgentKey, Expires: now.Add(time.Hour)})
	}); err != nil {
		t.Fatal(err)
	}
	a := New(st, slog.New(slog.NewTextHandler(io.Discard, nil)), func() time.Time { return now }, Config{Audience: "plane"})
	header := func(cluster string) string {
		tok, err := key.Assert(cluster, "plane", now)
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + tok
	}

	h := header("c1")
	got, cred, err := a.Authenticate(ctx, h)
	if err != nil || got != fqn || cred.Hash != hash {
		t.Fatalf("Authenticate = %q, %+v, %v; want %s", got, cred, err, fqn)
	}
	if _, _, err := a.Authenticate(ctx, h); connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "used already") {
		t.Fatalf("the same assertion again: %v; want Unauthenticated, used already", err)
	}
	if _, _, err := a.Authenticate(ctx, header("c2")); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("an assertion for another cluster: %v; want PermissionDenied", err)
	}
	if err := a.StillValid(ctx, hash, fqn); err != nil {
		t.Fatalf("StillValid with the credential stored = %v", err)
	}
	if err := st.Update(ctx, "test", func(tx store.Tx) error { return tx.DeleteCredentials(ctx, fqn, agentcred.KindAgentKey) }); err != nil {
		t.Fatal(err)
	}
	if err := a.StillValid(ctx, hash, fqn); err != ErrRevoked {
		t.Fatalf("StillValid once the credential is deleted = %v; want ErrRevoked", err)
	}
	if _, _, err := a.Authenticate(ctx, header("c1")); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("a fresh assertion of a deleted credential: %v; want Unauthenticated", err)
	}
}
