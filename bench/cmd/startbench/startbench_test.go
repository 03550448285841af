package main

import (
	"testing"
	"time"
)

func TestParseLinks(t *testing.T) {
	got, err := parseLinks("400:20ms, 100:60ms,0:0s")
	if err != nil {
		t.Fatal(err)
	}
	want := []link{{400, 20 * time.Millisecond}, {100, 60 * time.Millisecond}, {0, 0}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("link %d: got %v, want %v", i, got[i], want[i])
		}
	}
	if got[0].slug() != "400mbit-20ms" {
		t.Errorf("slug %q", got[0].slug())
	}
	for _, bad := range []string{"", "400", "400:fast", "-1:20ms", "x:20ms"} {
		if _, err := parseLinks(bad); err == nil {
			t.Errorf("parseLinks(%q) accepted", bad)
		}
	}
}

func TestSelectCases(t *testing.T) {
	cs, err := selectCases("c,a")
	if err != nil {
		t.Fatal(err)
	}
	// The order is the table's, not the flag's: a before c.
	if len(cs) != 2 || cs[0].ID != "a" || cs[1].ID != "c" {
		t.Fatalf("got %+v", cs)
	}
	if _, err := selectCases("a,z"); err == nil {
		t.Error("unknown case z accepted")
	}
}

func TestSummarize(t *testing.T) {
	mk := func(sec float64, bytes int64, cpu float64, rss int64) sample {
		s := sample{Seconds: sec, LinkBytes: bytes}
		s.addProc("riffle mount", time.Duration(cpu*float64(time.Second)), rss)
		return s
	}
	med, lo, hi := summarize([]sample{mk(3, 30, 1, 300), mk(1, 10, 3, 100), mk(2, 20, 2, 200)})
	if med.Seconds != 2 || lo.Seconds != 1 || hi.Seconds != 3 {
		t.Errorf("seconds: %v %v %v", med.Seconds, lo.Seconds, hi.Seconds)
	}
	if med.LinkBytes != 20 || med.CPUSeconds["riffle mount"] != 2 || med.PeakRSS["riffle mount"] != 200 {
		t.Errorf("median: %+v", med)
	}
	// An even count takes the mean of the middle two.
	med, _, _ = summarize([]sample{mk(1, 0, 0, 0), mk(4, 0, 0, 0)})
	if med.Seconds != 2.5 {
		t.Errorf("even median %v", med.Seconds)
	}
}

func TestReportRatios(t *testing.T) {
	f := flags{imageKind: "busybox", runs: 1}
	cs, _ := selectCases("a,b,c,d")
	r := newReport(f, &setupState{}, link{400, 20 * time.Millisecond}, cs, []workload{{Name: "echo"}})
	r.add("a", "echo", sample{Seconds: 10})
	r.add("b", "echo", sample{Seconds: 4})
	r.add("c", "echo", sample{Seconds: 1})
	r.markUnavailable("d", "echo", "no riffle run")
	r.summarize()
	if x := r.get("c", "echo"); x.RatioToA != 0.1 || x.RatioToB != 0.25 {
		t.Errorf("c: ×a %v ×b %v", x.RatioToA, x.RatioToB)
	}
	if x := r.get("d", "echo"); x.Median != nil || !r.unavailable("d", "echo") {
		t.Errorf("d: %+v", x)
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/var/tmp/a\040b`); got != "/var/tmp/a b" {
		t.Errorf("got %q", got)
	}
}
