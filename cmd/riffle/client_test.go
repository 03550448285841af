package main

import (
	"os"
	"testing"

	"github.com/riffle-dev/riffle/internal/server"
)

func TestResolveServer(t *testing.T) {
	dir := t.TempDir()
	empty := t.TempDir()
	if err := os.WriteFile(server.AddrFile(dir), []byte("0.0.0.0:9123\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_STATE_HOME", t.TempDir()) // no server in the default data dir
	for _, tc := range []struct {
		name, flag, env, dataDir, want string
	}{
		{"flag wins", "10.0.0.1:1", "10.0.0.2:2", dir, "10.0.0.1:1"},
		{"env next", "", "http://10.0.0.2:2/", dir, "10.0.0.2:2"},
		{"running server's address, unspecified host as loopback", "", "", dir, "127.0.0.1:9123"},
		{"default", "", "", empty, defaultServerAddr},
		{"default data dir", "", "", "", defaultServerAddr},
		{"ipv6 unspecified", "[::]:80", "", "", "127.0.0.1:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("RIFFLE_SERVER", tc.env)
			if got := resolveServer(tc.flag, tc.dataDir); got != tc.want {
				t.Errorf("resolveServer(%q, %q) with RIFFLE_SERVER=%q = %q, want %q", tc.flag, tc.dataDir, tc.env, got, tc.want)
			}
		})
	}
}
