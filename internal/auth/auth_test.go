package auth_test

import (
	"encoding/base64"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/riffle-dev/riffle/internal/auth"
)

func TestStoreCreateLookupRevoke(t *testing.T) {
	dir := t.TempDir()
	st, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	secret, tok, err := st.Create("ci", []auth.Binding{{Project: "p", Role: auth.RoleEditor}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, auth.TokenPrefix) || len(secret) != len(auth.TokenPrefix)+43 {
		t.Fatalf("secret %q", secret)
	}
	id, err := st.Lookup(secret)
	if err != nil || id.TokenID != tok.ID || id.RoleIn("p") != auth.RoleEditor || id.RoleIn("q") != auth.RoleNone {
		t.Fatalf("lookup: %+v %v", id, err)
	}
	// Only the hash is stored.
	st.Close()
	raw, err := os.ReadFile(dir + "/" + auth.FileName)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), secret) {
		t.Fatal("the database holds the secret")
	}
	st, err = auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Lookup(auth.NewSecret()); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("unknown token: %v", err)
	}
	if _, err := st.Lookup(""); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Fatalf("no token: %v", err)
	}
	if _, err := st.Revoke("ci"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Lookup(secret); !errors.Is(err, auth.ErrUnauthenticated) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked token: %v", err)
	}
	if _, err := st.Revoke("nope"); !errors.Is(err, auth.ErrNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
	ts, err := st.List()
	if err != nil || len(ts) != 1 || ts[0].Revoked == nil {
		t.Fatalf("list: %+v %v", ts, err)
	}
	if _, _, err := st.Create("bad", []auth.Binding{{Project: "Bad Project", Role: auth.RoleViewer}}); err == nil {
		t.Fatal("a malformed project was accepted")
	}
}

func TestEnsureAdminToken(t *testing.T) {
	dir := t.TempDir()
	st, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	made, err := st.EnsureAdminToken(dir)
	if err != nil || !made {
		t.Fatalf("first start: %v %v", made, err)
	}
	fi, err := os.Stat(auth.AdminTokenPath(dir))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token: %v %v", fi, err)
	}
	first, _ := auth.ReadTokenFile(auth.AdminTokenPath(dir))
	if made, err := st.EnsureAdminToken(dir); err != nil || made {
		t.Fatalf("second start made a new token: %v %v", made, err)
	}
	id, err := st.Lookup(first)
	if err != nil || id.RoleIn("anything") != auth.RoleAdmin {
		t.Fatalf("admin token: %+v %v", id, err)
	}
	// Revoked: the next start replaces it.
	if _, err := st.Revoke(id.TokenID); err != nil {
		t.Fatal(err)
	}
	if made, err := st.EnsureAdminToken(dir); err != nil || !made {
		t.Fatalf("after revoke: %v %v", made, err)
	}
	if second, _ := auth.ReadTokenFile(auth.AdminTokenPath(dir)); second == first {
		t.Fatal("the revoked token was kept")
	}
}

func TestFromHeaderAndAuthorize(t *testing.T) {
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("oauth2accesstoken:rfl_x"))
	for h, want := range map[string]string{"Bearer rfl_x": "rfl_x", basic: "rfl_x", "": "", "Digest x": "", "Basic !!!": ""} {
		if got := auth.FromHeader(h); got != want {
			t.Errorf("FromHeader(%q) = %q, want %q", h, got, want)
		}
	}
	id := &auth.Identity{TokenID: "tok-1", Bindings: []auth.Binding{{Project: "p", Role: auth.RoleViewer}, {Project: "*", Role: auth.RoleViewer}, {Project: "q", Role: auth.RoleEditor}}}
	if err := auth.Authorize(id, "q", auth.RoleEditor); err != nil {
		t.Fatal(err)
	}
	err := auth.Authorize(id, "p", auth.RoleEditor)
	if !errors.Is(err, auth.ErrPermissionDenied) || !strings.Contains(err.Error(), "needs editor") {
		t.Fatalf("viewer in p: %v", err)
	}
	if err := auth.Authorize(nil, "p", auth.RoleViewer); !errors.Is(err, auth.ErrUnauthenticated) || !strings.Contains(err.Error(), "viewer") {
		t.Fatalf("anonymous: %v", err)
	}
	if err := auth.Authorize(id, "", auth.RoleEditor); err != nil {
		t.Fatalf("editor somewhere: %v", err)
	}
}
