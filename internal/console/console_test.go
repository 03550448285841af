package console_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestServedWithoutToken: riffle serve answers the console's pages to
// anyone, with a policy that runs only its own scripts, and still refuses
// the API behind them without a token.
func TestServedWithoutToken(t *testing.T) {
	_, addr := startServer(t)
	cases := []struct {
		path, want, ctype string
		code              int
	}{
		{"/", `<script src="/console/app.js"`, "text/html", http.StatusOK},
		{"/console/app.js", "sessionStorage", "javascript", http.StatusOK},
		{"/console/style.css", "body", "text/css", http.StatusOK},
		{"/console/nope.js", "", "", http.StatusNotFound},
		{"/v1/projects/demo/locations/us-central1/jobs", "UNAUTHENTICATED", "application/json", http.StatusUnauthorized},
	}
	for _, c := range cases {
		resp, err := http.Get("http://" + addr + c.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.Contains(string(b), c.want) || !strings.Contains(resp.Header.Get("Content-Type"), c.ctype) {
			t.Errorf("GET %s: %s %s (%q), want %d with %q", c.path, resp.Status, resp.Header.Get("Content-Type"), b, c.code, c.want)
		}
		if c.code == http.StatusOK && !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
			t.Errorf("GET %s: no Content-Security-Policy limiting scripts", c.path)
		}
	}
}
