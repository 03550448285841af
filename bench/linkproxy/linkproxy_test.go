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

// TestPausedReaderYieldsLink checks that a connection whose reader stops
// reading stops taking the link: while another connection reads 32 MiB,
// the paused one's data does not keep crossing the link.
func TestPausedReaderYieldsLink(t *testing.T) {
	l := bigBodyLink(t, 64<<20, 10*time.Millisecond)

	// The paused connection: its response is never read past the headers.
	paused := &http.Client{Transport: &http.Transport{}}
	resp, err := paused.Get("http://" + l.Addr() + "/paused")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	active := &http.Client{Transport: &http.Transport{}}
	resp2, err := active.Get("http://" + l.Addr() + "/active")
	if err != nil {
		t.Fatal(err)
	}
	const want = 32 << 20
	if _, err := io.CopyN(io.Discard, resp2.Body, want); err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	// Shared fairly, the paused connection would have taken about as much
	// as the active one. Bounded, it takes its window plus what the
	// loopback sockets between proxy and client buffer (a few MiB).
	other := l.entered.Load() - want
	if other > 16<<20 {
		t.Errorf("the paused connection took %d MiB of the link while the other read %d MiB; want it bounded by its window", other>>20, want>>20)
	}
}

// TestClosedReceiverFreesLink checks that a response whose client has
// gone stops crossing the link: the proxy stops reading it from the
// server instead of taking the rest of a large body at the link's rate.
func TestClosedReceiverFreesLink(t *testing.T) {
	l := bigBodyLink(t, 256<<20, 5*time.Millisecond)
	tr := &http.Transport{}
	resp, err := (&http.Client{Transport: tr}).Get("http://" + l.Addr() + "/big")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, resp.Body, 4<<20); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close() // before the end: the transport closes the connection
	tr.CloseIdleConnections()
	// Wait until the link is idle: its count of bytes taken stops growing.
	last := l.entered.Load()
	for {
		time.Sleep(200 * time.Millisecond)
		now := l.entered.Load()
		if now == last {
			break
		}
		last = now
	}
	// At 64 MiB/s the whole body would take 4 s of link; stopped, the
	// link carried what was read plus what was in flight.
	if last > 64<<20 {
		t.Errorf("the link carried %d MiB of a body whose client read 4 MiB and left", last>>20)
	}
}

// bigBodyLink serves a body of size bytes to every request, behind a link
// of 64 MiB/s with one-way delay.
func bigBodyLink(t *testing.T, size int, delay time.Duration) *Link {
	t.Helper()
	chunk := make([]byte, 1<<20)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	l, err := Start(strings.TrimPrefix(srv.URL, "http://"), delay, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
