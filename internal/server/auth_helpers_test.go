package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	batch "cloud.google.com/go/batch/apiv1"
	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/oauth2"
	"google.golang.org/api/option"
	"google.golang.org/grpc"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/remote"
	"github.com/riffle-dev/riffle/internal/server"
)

// adminToken is the token `riffle serve` left in its data directory.
func adminToken(t *testing.T, srv *server.Server) string {
	t.Helper()
	tok, err := auth.ReadTokenFile(auth.AdminTokenPath(srv.Config().DataDir))
	if err != nil {
		t.Fatalf("admin token: %v", err)
	}
	return tok
}

// tokenKeychain logs in to every registry with tok as the password, as
// docker login does with Artifact Registry's oauth2accesstoken.
func tokenKeychain(tok string) authn.Keychain { return staticKeychain{tok} }

type staticKeychain struct{ tok string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	if k.tok == "" {
		return authn.Anonymous, nil
	}
	return &authn.Basic{Username: "oauth2accesstoken", Password: k.tok}, nil
}

// registryClient is a registry client that logs in with tok.
func registryClient(tok string) *remote.Client {
	return remote.New(remote.Options{Keychain: tokenKeychain(tok)})
}

// withToken is the Google client option that sends tok as an OAuth2
// bearer token.
func withToken(tok string) option.ClientOption {
	return option.WithTokenSource(oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok}))
}

// plainBearer sends a token over plaintext gRPC, which gRPC's own OAuth2
// credentials refuse to do; only tests of the h2c port use it.
type plainBearer string

func (b plainBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (plainBearer) RequireTransportSecurity() bool { return false }

func withPlainBearer(tok string) option.ClientOption {
	return option.WithGRPCDialOption(grpc.WithPerRPCCredentials(plainBearer(tok)))
}

// get is an HTTP GET with tok as bearer token ("" for none).
func get(t *testing.T, url, tok string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// request makes a request with tok (if any) as bearer token and body (if
// not nil) as JSON; the caller closes the response body.
func request(t *testing.T, ctx context.Context, method, url, tok string, body any) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// runJob creates job id under parent with c and waits until it ends.
func runJob(t *testing.T, ctx context.Context, c *batch.Client, parent, id string, job *batchpb.Job) *batchpb.Job {
	t.Helper()
	created, err := c.CreateJob(ctx, &batchpb.CreateJobRequest{Parent: parent, JobId: id, Job: job})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		got, err := c.GetJob(ctx, &batchpb.GetJobRequest{Name: created.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		if st := got.GetStatus().GetState(); st == batchpb.JobStatus_SUCCEEDED || st == batchpb.JobStatus_FAILED || time.Now().After(deadline) {
			return got
		}
		time.Sleep(200 * time.Millisecond)
	}
}
