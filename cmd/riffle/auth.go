package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/riffle-dev/riffle/internal/auth"
	"github.com/riffle-dev/riffle/internal/server"
)

func init() { subcommands = append(subcommands, newAuthCmd) }

// clientToken finds the token client commands send: $RIFFLE_TOKEN, else
// the admin token `riffle serve` left in dataDir (default
// server.DefaultDataDir()), readable by the user who runs the server. ""
// when there is none; the server then says which role is missing.
func clientToken(dataDir string) string {
	if t := strings.TrimSpace(os.Getenv("RIFFLE_TOKEN")); t != "" {
		return t
	}
	if dataDir == "" {
		dataDir = server.DefaultDataDir()
	}
	t, err := auth.ReadTokenFile(auth.AdminTokenPath(dataDir))
	if err != nil {
		return ""
	}
	return t
}

// serverKeychain logs in to the local riffle serve's registry (addr) with
// token, as docker login with the token as password would, and uses the
// docker config for every other registry.
type serverKeychain struct{ addr, token string }

func (k serverKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if k.token != "" && r.RegistryStr() == k.addr {
		return &authn.Basic{Username: "riffle", Password: k.token}, nil
	}
	return authn.DefaultKeychain.Resolve(r)
}

// authTransport adds the bearer token to every request (logs, index
// service, token API).
type authTransport struct {
	token string
	next  http.RoundTripper
}

func (t authTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.token != "" && r.Header.Get("Authorization") == "" {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+t.token)
	}
	return t.next.RoundTrip(r)
}

// serverTLS is how the CLI trusts a local server that serves TLS: exactly
// the certificate it left in its data directory (serve.crt; the name in it
// need not be the loopback address dialled), or else the CAs in
// $RIFFLE_CA_CERT (a PEM file, verified as usual). Nil: plain HTTP.
func serverTLS(dataDir string) *tls.Config {
	if dataDir == "" {
		dataDir = server.DefaultDataDir()
	}
	if pemBytes, err := os.ReadFile(server.CertFile(dataDir)); err == nil {
		if b, _ := pem.Decode(pemBytes); b != nil {
			leaf := b.Bytes
			return &tls.Config{
				InsecureSkipVerify: true, // replaced by the pin below
				VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
					if len(raw) == 0 || !bytes.Equal(raw[0], leaf) {
						return fmt.Errorf("the server's certificate is not the one in %s", server.CertFile(dataDir))
					}
					return nil
				},
			}
		}
	}
	if ca := os.Getenv("RIFFLE_CA_CERT"); ca != "" {
		if pemBytes, err := os.ReadFile(ca); err == nil {
			pool := x509.NewCertPool()
			if pool.AppendCertsFromPEM(pemBytes) {
				return &tls.Config{RootCAs: pool}
			}
		}
	}
	return nil
}

// serverScheme is https when the local server serves TLS (serverTLS).
func serverScheme(dataDir string) string {
	if serverTLS(dataDir) != nil {
		return "https"
	}
	return "http"
}

// serverHTTPClient is an HTTP client for the server: it sends the token
// (clientToken) and trusts the server's TLS certificate (serverTLS).
func serverHTTPClient(dataDir string) *http.Client {
	return &http.Client{Transport: authTransport{token: clientToken(dataDir), next: registryTransport(dataDir)}}
}

// registryTransport is the base transport of the CLI's registry clients:
// the default one, trusting the local server's certificate when it serves
// TLS.
func registryTransport(dataDir string) http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64 // as remote's default: many ranged reads
	t.TLSClientConfig = serverTLS(dataDir)
	return t
}

func newAuthCmd() *cobra.Command {
	var serverAddr, dataDir string
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Manage access tokens of riffle serve (needs an admin token)",
		Long: `auth manages the bearer tokens riffle serve accepts. Each token has a role
(viewer, editor or admin) in one or more projects, or in every project (*).
Commands use $RIFFLE_TOKEN, or the admin token riffle serve wrote to its data
directory. See docs/security.md.`,
	}
	cmd.PersistentFlags().StringVar(&serverAddr, "server", "", "riffle serve address HOST:PORT (default: $RIFFLE_SERVER, or the address the local server recorded)")
	cmd.PersistentFlags().StringVar(&dataDir, "data-dir", "", "data directory of the local riffle serve (to find its address and admin token)")
	tokens := &cobra.Command{Use: "tokens", Short: "Create, list and revoke tokens"}
	call := func(ctx context.Context, method, path string, body, out any) error {
		return authCall(ctx, resolveServer(serverAddr, dataDir), dataDir, method, path, body, out)
	}
	tokens.AddCommand(newTokensCreateCmd(call), newTokensListCmd(call), newTokensRevokeCmd(call))
	cmd.AddCommand(tokens)
	return cmd
}

type authCaller func(ctx context.Context, method, path string, body, out any) error

func newTokensCreateCmd(call authCaller) *cobra.Command {
	var (
		name     string
		role     string
		projects []string
	)
	cmd := &cobra.Command{
		Use:   "create --role ROLE --project PROJECT [--name NAME]",
		Short: "Create a token; its secret is printed once and cannot be shown again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := auth.ParseRole(role)
			if err != nil {
				return err
			}
			if len(projects) == 0 {
				return fmt.Errorf("auth: --project is required (a project ID, or * for every project)")
			}
			var bs []auth.Binding
			for _, p := range projects {
				bs = append(bs, auth.Binding{Project: p, Role: r})
			}
			var out struct {
				Secret string     `json:"secret"`
				Token  auth.Token `json:"token"`
			}
			if err := call(cmd.Context(), http.MethodPost, "/riffle/v1/auth/tokens", map[string]any{"name": name, "bindings": bs}, &out); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), out.Secret)
			fmt.Fprintf(cmd.ErrOrStderr(), "created %s (%s); the secret above is shown only once\n", out.Token.ID, bindingsString(out.Token.Bindings))
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "a name for the token (shown in lists and audit logs)")
	cmd.Flags().StringVar(&role, "role", "", "viewer, editor or admin")
	cmd.Flags().StringSliceVar(&projects, "project", nil, "project the role applies in (repeatable; * for every project)")
	return cmd
}

func newTokensListCmd(call authCaller) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out struct {
				Tokens []auth.Token `json:"tokens"`
			}
			if err := call(cmd.Context(), http.MethodGet, "/riffle/v1/auth/tokens", nil, &out); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tROLES\tCREATED\tREVOKED")
			for _, t := range out.Tokens {
				revoked := "-"
				if t.Revoked != nil {
					revoked = t.Revoked.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, bindingsString(t.Bindings), t.Created.Format(time.RFC3339), revoked)
			}
			return tw.Flush()
		},
	}
}

func newTokensRevokeCmd(call authCaller) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID|NAME",
		Short: "Revoke a token; requests with it are refused from now on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var t auth.Token
			if err := call(cmd.Context(), http.MethodDelete, "/riffle/v1/auth/tokens/"+args[0], nil, &t); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s\n", t.ID)
			return nil
		},
	}
}

func bindingsString(bs []auth.Binding) string {
	parts := make([]string, len(bs))
	for i, b := range bs {
		parts[i] = b.String()
	}
	return strings.Join(parts, ",")
}

// authCall makes one token API call and decodes its JSON answer into out.
func authCall(ctx context.Context, addr, dataDir, method, path string, body, out any) error {
	return serverCall(ctx, "auth", "", addr, dataDir, method, path, body, out)
}

// serverCall makes one JSON call to riffle serve's own API with the
// caller's token and decodes the answer into out. Errors start with what
// (the command's name); hint follows the "cannot reach" error.
func serverCall(ctx context.Context, what, hint, addr, dataDir, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, serverScheme(dataDir)+"://"+addr+path, rd)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := serverHTTPClient(dataDir).Do(req)
	if err != nil {
		return fmt.Errorf("%s: cannot reach riffle serve at %s%s: %w", what, addr, hint, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%s: %s: %s", what, resp.Status, e.Error.Message)
		}
		return fmt.Errorf("%s: %s", what, resp.Status)
	}
	return json.Unmarshal(raw, out)
}
