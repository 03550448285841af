package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/opencontainers/go-digest"
	"golang.org/x/oauth2"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/server"
)

// selfSignedCert writes a certificate for 127.0.0.1 and its key to dir and
// returns their paths and a pool that trusts it.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "riffle test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestOfficialClientWithTokenOverTLS: the official Batch client with a
// static OAuth2 token source creates, gets, lists and deletes a job over
// gRPC with TLS and over REST (TLS and plain HTTP on loopback), all on the
// one port; without the token the same calls are refused.
func TestOfficialClientWithTokenOverTLS(t *testing.T) {
	certFile, keyFile, pool := selfSignedCert(t, t.TempDir())
	ctx, srv, addr := startServerWith(t, server.Config{TLS: server.TLSConfig{Cert: certFile, Key: keyFile}})
	ts := oauth2.StaticTokenSource(&oauth2.Token{AccessToken: adminToken(t, srv)})
	tlsConf := &tls.Config{RootCAs: pool}

	grpcClient, err := batch.NewClient(ctx, option.WithEndpoint(addr), option.WithTokenSource(ts),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(credentials.NewTLS(tlsConf))))
	if err != nil {
		t.Fatal(err)
	}
	defer grpcClient.Close()
	// REST over TLS: the client's own transport cannot be given a CA, so
	// it gets an HTTP client whose transport adds the same token source.
	hc := &http.Client{Transport: &oauth2.Transport{Source: ts, Base: &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true}}}
	restClient, err := batch.NewRESTClient(ctx, option.WithEndpoint("https://"+addr), option.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	defer restClient.Close()

	for name, c := range map[string]*batch.Client{"grpc": grpcClient, "rest": restClient} {
		t.Run(name, func(t *testing.T) { createGetListDelete(ctx, t, c, "tls-"+name) })
	}

	noToken, err := batch.NewClient(ctx, option.WithEndpoint(addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(credentials.NewTLS(tlsConf))))
	if err != nil {
		t.Fatal(err)
	}
	defer noToken.Close()
	_, err = noToken.GetJob(ctx, &batchpb.GetJobRequest{Name: "projects/p/locations/us-central1/jobs/x"})
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "viewer") {
		t.Fatalf("gRPC without a token: %v, want UNAUTHENTICATED naming the viewer role", err)
	}
}

func createGetListDelete(ctx context.Context, t *testing.T, c *batch.Client, id string) {
	t.Helper()
	parent := "projects/p/locations/us-central1"
	created, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: id, Job: scriptJob()})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	got, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: created.GetName()})
	if err != nil || got.GetUid() != created.GetUid() {
		t.Fatalf("get: %v", err)
	}
	it := c.ListJobs(ctx, &batchpb.ListJobsRequest{Parent: parent})
	found := false
	for {
		j, err := it.Next()
		if err == iterator.Done {
			break
		}
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		found = found || j.GetName() == created.GetName()
	}
	if !found {
		t.Fatalf("list does not show %s", created.GetName())
	}
	op, err := c.DeleteJob(ctx, &batchpb.DeleteJobRequest{Name: created.GetName()})
	if err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := op.Wait(ctx); err != nil {
		t.Fatalf("delete operation: %v", err)
	}
	if _, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: created.GetName()}); status.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v, want NOT_FOUND", err)
	}
}

// TestListenRefusesNonLoopbackWithoutTLS: a network address needs TLS or
// the explicit flag, and the error names the flag.
func TestListenRefusesNonLoopbackWithoutTLS(t *testing.T) {
	ctx := context.Background()
	srv, err := server.New(ctx, server.Config{DataDir: t.TempDir(), Listen: "0.0.0.0:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if ln, err := srv.Listen(); err == nil {
		ln.Close()
		t.Fatal("listened on 0.0.0.0 without TLS")
	} else if !strings.Contains(err.Error(), "--insecure-listen-without-tls") || !strings.Contains(err.Error(), "--tls-cert") {
		t.Fatalf("refusal does not name the flags: %v", err)
	}

	srv2, err := server.New(ctx, server.Config{DataDir: t.TempDir(), Listen: "0.0.0.0:0", InsecureListenWithoutTLS: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	ln, err := srv2.Listen()
	if err != nil {
		t.Fatalf("with insecureListenWithoutTLS: %v", err)
	}
	ln.Close()
}

// httpsRewrite sends a registry client's loopback requests (which it makes
// over http) over TLS trusting pool.
type httpsRewrite struct{ t *http.Transport }

func (h httpsRewrite) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.URL.Scheme = "https"
	return h.t.RoundTrip(r)
}

// TestTLSServerReachesItsOwnRegistry: with TLS on the one port, the
// server's own registry requests (submit checks, indexing on push) still
// reach its registry.
func TestTLSServerReachesItsOwnRegistry(t *testing.T) {
	certFile, keyFile, pool := selfSignedCert(t, t.TempDir())
	ctx, srv, addr := startServerWith(t, server.Config{TLS: server.TLSConfig{Cert: certFile, Key: keyFile}})
	tok := adminToken(t, srv)
	spec, _ := imagegen.Busybox("/bin/busybox")
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	rc := remote.New(remote.Options{Keychain: tokenKeychain(tok), Transport: httpsRewrite{&http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}})
	ref := addr + "/p/r/busybox:v1"
	if err := rc.Push(ctx, ref, img, nil); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	h, _ := layers[0].Digest()
	waitFor(t, func() bool { _, _, err := srv.Indexes().Get(digest.Digest(h.String())); return err == nil })

	ts := oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok})
	g, err := batch.NewClient(ctx, option.WithEndpoint(addr), option.WithTokenSource(ts),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool}))))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	job := &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{Runnables: []*batchpb.Runnable{{
		Executable: &batchpb.Runnable_Container_{Container: &batchpb.Runnable_Container{ImageUri: ref, Commands: []string{"true"}}}}}}}}}
	if _, err := g.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: "tls-image", Job: job}); err != nil {
		t.Fatalf("submit with an image of the TLS server's registry: %v", err)
	}
}

// TestOwnRegistryByNetworkAddress: with TLS on 0.0.0.0, an image named by
// the server's network address is the server's own: allowed at submit and
// reached directly, although that address may be private.
func TestOwnRegistryByNetworkAddress(t *testing.T) {
	var hostIP string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && !ipn.IP.IsLoopback() {
			hostIP = ipn.IP.String()
			break
		}
	}
	if hostIP == "" {
		t.Skip("no non-loopback IPv4 address on this machine")
	}
	certFile, keyFile, pool := selfSignedCert(t, t.TempDir())
	ctx, srv, addr := startServerWith(t, server.Config{Listen: "0.0.0.0:0", TLS: server.TLSConfig{Cert: certFile, Key: keyFile}})
	_, port, _ := net.SplitHostPort(addr)
	tok := adminToken(t, srv)
	tlsConf := &tls.Config{RootCAs: pool}
	spec, _ := imagegen.Busybox("/bin/busybox")
	img, err := imagegen.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	rc := remote.New(remote.Options{Keychain: tokenKeychain(tok), Transport: httpsRewrite{&http.Transport{TLSClientConfig: tlsConf}}})
	if err := rc.Push(ctx, "127.0.0.1:"+port+"/p/r/busybox:v1", img, nil); err != nil {
		t.Fatal(err)
	}
	ts := oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok})
	c, err := batch.NewClient(ctx, option.WithEndpoint("127.0.0.1:"+port), option.WithTokenSource(ts),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(credentials.NewTLS(tlsConf))))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ref := net.JoinHostPort(hostIP, port) + "/p/r/busybox:v1"
	job := &batchpb.Job{TaskGroups: []*batchpb.TaskGroup{{TaskSpec: &batchpb.TaskSpec{Runnables: []*batchpb.Runnable{{
		Executable: &batchpb.Runnable_Container_{Container: &batchpb.Runnable_Container{ImageUri: ref, Commands: []string{"true"}}}}}}}}}
	if _, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: "projects/p/locations/us-central1", JobId: "by-network-address", Job: job}); err != nil {
		t.Fatalf("submit naming the server by %s: %v", hostIP, err)
	}
}
