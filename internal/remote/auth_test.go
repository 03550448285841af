package remote_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd" // registers the "htpasswd" access controller
	_ "github.com/distribution/distribution/v3/registry/auth/token"    // registers the "token" access controller
	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/crypto/bcrypt"

	"github.com/riffle-dev/riffle/internal/registry"
	"github.com/riffle-dev/riffle/internal/remote"
)

// htpasswdAuth configures distribution's basic auth with one user.
func htpasswdAuth(t *testing.T, user, pass string) func(*configuration.Configuration) {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(path, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return func(cfg *configuration.Configuration) {
		cfg.Auth = configuration.Auth{"htpasswd": configuration.Parameters{"realm": "riffle-test", "path": path}}
	}
}

// dockerConfig points DOCKER_CONFIG at a config.json holding user:pass for
// host, as `docker login` writes it.
func dockerConfig(t *testing.T, host, user, pass string) {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, host, base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

func TestBasicAuthFromDockerConfig(t *testing.T) {
	const user, pass = "bob", "hunter2"
	r := startRegistry(t, registry.Options{Configure: htpasswdAuth(t, user, pass)}, nil)
	ctx := context.Background()

	// No credentials: a clear 401.
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	anon := newClient(remote.Options{})
	err := anon.Push(ctx, r.host+"/p/r/img:v1", build(t, smallSpec(5)), nil)
	if !errors.Is(err, remote.ErrUnauthorized) || !strings.Contains(err.Error(), "docker login "+r.host) {
		t.Fatalf("push without credentials: %v, want ErrUnauthorized and how to log in", err)
	}

	dockerConfig(t, r.host, user, pass)
	c := newClient(remote.Options{})
	_, want, dgst := pushedLayer(t, c, r.host, "p/r/img")
	img, err := c.Resolve(ctx, r.host+"/p/r/img:v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.RepositoryBlob(ctx, img.Repository, dgst, int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 777)
	if _, err := b.ReadAt(p, 4242); err != nil || !bytes.Equal(p, want[4242:4242+777]) {
		t.Fatalf("ranged read with basic auth: %v", err)
	}
	tags, err := c.Tags(ctx, r.host+"/p/r/img")
	if err != nil || !slices.Equal(tags, []string{"v1"}) {
		t.Errorf("tags = %v, %v", tags, err)
	}

	// A credential helper (credHelpers in config.json), as cloud logins
	// install: docker-credential-NAME get reads the host on stdin.
	bin := t.TempDir()
	helper := "#!/bin/sh\nread host\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"" + user + "\",\"Secret\":\"" + pass + "\"}' \"$host\"\n"
	if err := os.WriteFile(filepath.Join(bin, "docker-credential-riffle-test"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	cfgDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(fmt.Sprintf(`{"credHelpers": {%q: "riffle-test"}}`, r.host)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", cfgDir)
	viaHelper := newClient(remote.Options{})
	if got, err := viaHelper.Resolve(ctx, r.host+"/p/r/img:v1", nil); err != nil || got.Digest != img.Digest {
		t.Fatalf("resolve with a credential helper: %v", err)
	}

	// Wrong password: a clear 401, not a retry loop.
	dockerConfig(t, r.host, user, "wrong")
	bad := newClient(remote.Options{})
	_, err = bad.Resolve(ctx, r.host+"/p/r/img:v1", nil)
	if !errors.Is(err, remote.ErrUnauthorized) {
		t.Fatalf("wrong password: %v, want ErrUnauthorized", err)
	}
	t.Logf("wrong password: %v", err)
}

// tokenServer is a Docker token service (the bearer-token flow of the
// distribution auth spec): it signs ES256 JWTs with a test key whose
// certificate the registry trusts through rootcertbundle.
type tokenServer struct {
	t        *testing.T
	key      *ecdsa.PrivateKey
	certDER  []byte
	certPath string
	user     string
	pass     string

	mu       sync.Mutex
	requests []tokenRequest
}

type tokenRequest struct {
	Service string
	Scopes  []string
	User    string
}

const (
	tokenService = "riffle-test-registry"
	tokenIssuer  = "riffle-test-issuer"
)

func newTokenServer(t *testing.T, user, pass string) *tokenServer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "riffle test token signer"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "token-ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &tokenServer{t: t, key: key, certDER: der, certPath: path, user: user, pass: pass}
}

// configure turns on distribution's token auth with realm at realmURL.
func (ts *tokenServer) configure(realmURL string) func(*configuration.Configuration) {
	return func(cfg *configuration.Configuration) {
		cfg.Auth = configuration.Auth{"token": configuration.Parameters{
			"realm":          realmURL,
			"service":        tokenService,
			"issuer":         tokenIssuer,
			"rootcertbundle": ts.certPath,
		}}
	}
}

// ServeHTTP issues a token for the requested scopes: pull for anyone,
// push only with the right password.
func (ts *tokenServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	user, pass, ok := r.BasicAuth()
	if !ok && r.Form.Get("username") != "" { // the OAuth2 password grant
		user, pass, ok = r.Form.Get("username"), r.Form.Get("password"), true
	}
	if ok && (user != ts.user || pass != ts.pass) {
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}`, http.StatusUnauthorized)
		return
	}
	if !ok {
		user = ""
	}
	scopes := r.Form["scope"]
	ts.mu.Lock()
	ts.requests = append(ts.requests, tokenRequest{Service: r.Form.Get("service"), Scopes: scopes, User: user})
	ts.mu.Unlock()

	type access struct {
		Type    string   `json:"type"`
		Name    string   `json:"name"`
		Actions []string `json:"actions"`
	}
	var grants []access
	for _, s := range scopes {
		for _, one := range strings.Split(s, " ") {
			parts := strings.Split(one, ":")
			if len(parts) < 3 {
				continue
			}
			typ, name, actions := parts[0], strings.Join(parts[1:len(parts)-1], ":"), strings.Split(parts[len(parts)-1], ",")
			var granted []string
			for _, a := range actions {
				if a == "pull" || user != "" {
					granted = append(granted, a)
				}
			}
			grants = append(grants, access{Type: typ, Name: name, Actions: granted})
		}
	}
	now := time.Now()
	claims := map[string]any{
		"iss": tokenIssuer, "sub": user, "aud": tokenService,
		"exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": fmt.Sprint(now.UnixNano()), "access": grants,
	}
	tok := ts.sign(claims)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 300, "issued_at": now.Format(time.RFC3339)})
}

// sign makes an ES256 JWT carrying the signing certificate in x5c, which
// distribution verifies against rootcertbundle.
func (ts *tokenServer) sign(claims map[string]any) string {
	hdr, _ := json.Marshal(map[string]any{"alg": "ES256", "typ": "JWT", "x5c": []string{base64.StdEncoding.EncodeToString(ts.certDER)}})
	body, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(hdr) + "." + enc.EncodeToString(body)
	sum := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, ts.key, sum[:])
	if err != nil {
		ts.t.Error(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + enc.EncodeToString(sig)
}

func (ts *tokenServer) seen() []tokenRequest {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return slices.Clone(ts.requests)
}

func TestBearerTokenFlow(t *testing.T) {
	const user, pass = "carol", "tok3n"
	ts := newTokenServer(t, user, pass)

	// The token service shares the registry's host:port, as
	// go-containerregistry refuses token realms on other private addresses.
	srv := httptest.NewUnstartedServer(nil)
	host := srv.Listener.Addr().String()
	reg, err := registry.New(context.Background(), registry.Options{RootDir: t.TempDir(), Configure: ts.configure("http://" + host + "/token")})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/token", ts)
	mux.Handle("/v2/", reg)
	srv.Config.Handler = mux
	srv.Start()
	t.Cleanup(func() { srv.Close(); reg.Close() })
	ctx := context.Background()

	// Anonymous users may not push.
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	anon := newClient(remote.Options{Keychain: authn.NewMultiKeychain()})
	err = anon.Push(ctx, host+"/p/r/img:v1", build(t, smallSpec(11)), nil)
	if !errors.Is(err, remote.ErrUnauthorized) && !errors.Is(err, remote.ErrDenied) {
		t.Fatalf("anonymous push: %v, want ErrUnauthorized or ErrDenied", err)
	}
	t.Logf("anonymous push: %v", err)

	// Push with the credentials of docker login.
	dockerConfig(t, host, user, pass)
	pusher := newClient(remote.Options{})
	img := build(t, smallSpec(11))
	if err := pusher.Push(ctx, host+"/p/r/img:v1", img, nil); err != nil {
		t.Fatal(err)
	}
	var pushScope bool
	for _, r := range ts.seen() {
		if r.User == user && slices.Contains(r.Scopes, "repository:p/r/img:push,pull") && r.Service == tokenService {
			pushScope = true
		}
	}
	if !pushScope {
		t.Errorf("no token request for repository:p/r/img:push,pull by %s: %+v", user, ts.seen())
	}

	// Pull anonymously: resolve, ranged reads, a full read.
	n0 := len(ts.seen())
	got, err := anon.Resolve(ctx, host+"/p/r/img:v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != mustDigest(t, img) {
		t.Fatalf("digest %s, want %s", got.Digest, mustDigest(t, img))
	}
	layers, _ := img.Layers()
	want := layerBytes(t, layers[1])
	b, err := anon.RepositoryBlob(ctx, got.Repository, got.Manifest.Layers[1].Digest, got.Manifest.Layers[1].Size)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1, 100000, int64(len(want)) - 10} {
		p := make([]byte, 10)
		if _, err := b.ReadAt(p, off); err != nil || !bytes.Equal(p, want[off:off+10]) {
			t.Fatalf("ranged read at %d: %v", off, err)
		}
	}
	rc, err := b.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	all, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(all, want) {
		t.Fatalf("full read: %v", err)
	}
	pulls := ts.seen()[n0:]
	if len(pulls) == 0 {
		t.Fatal("the pull asked for no token")
	}
	for _, r := range pulls {
		if r.User != "" || !slices.Equal(r.Scopes, []string{"repository:p/r/img:pull"}) || r.Service != tokenService {
			t.Errorf("pull token request %+v, want anonymous, scope repository:p/r/img:pull, service %s", r, tokenService)
		}
	}
	// One handshake serves every read: tokens are cached per scope.
	if len(pulls) > 1 {
		t.Errorf("%d token requests for one pull, want 1", len(pulls))
	}
}
