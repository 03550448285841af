package linkproxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestLatencyAndRate(t *testing.T) {
	body := strings.Repeat("x", 4<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			io.WriteString(w, "ok")
			return
		}
		io.WriteString(w, body)
	}))
	defer srv.Close()
	const delay = 20 * time.Millisecond
	l, err := Start(strings.TrimPrefix(srv.URL, "http://"), delay, 16<<20) // 16 MiB/s
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := &http.Client{Transport: &http.Transport{}}

	get := func(path string) time.Duration {
		start := time.Now()
		resp, err := c.Get("http://" + l.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return time.Since(start)
	}
	get("/small") // connect
	rtt := get("/small")
	// Lower bounds prove the emulation; the upper bounds are loose because
	// test machines are small and busy.
	if rtt < 2*delay || rtt > 2*delay+2*time.Second {
		t.Errorf("request on a warm connection took %v, want at least %v", rtt, 2*delay)
	}
	d := get("/big")
	// 4 MiB at 16 MiB/s is 250 ms, plus a round trip.
	if d < 240*time.Millisecond || d > 10*time.Second {
		t.Errorf("4 MiB took %v, want at least 250ms", d)
	}
}
