package server

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

// TestOutboundDialerRefusesPrivate: the dialer checks the address it
// connects to, whatever name led there, so a name that resolves to a
// private address at connect time (DNS rebinding) gets nowhere.
func TestOutboundDialerRefusesPrivate(t *testing.T) {
	o := newOutbound([]string{"10.9.0.0/16"})
	for ip, want := range map[string]bool{
		"127.0.0.1": true, "8.8.8.8": true, "10.9.1.1": true,
		"10.1.2.3": false, "169.254.169.254": false, "192.168.1.1": false, "100.64.0.1": false, "0.0.0.0": false, "fe80::1": false,
	} {
		if got := o.ipAllowed(netip.MustParseAddr(ip)); got != want {
			t.Errorf("%s allowed = %v, want %v", ip, got, want)
		}
	}
	c := &http.Client{Transport: o.transport()}
	req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://169.254.169.254/v2/", nil)
	_, err := c.Do(req)
	if err == nil || !strings.Contains(err.Error(), "outbound.allowRegistries") {
		t.Fatalf("GET link-local: %v, want a refusal naming outbound.allowRegistries", err)
	}
}
