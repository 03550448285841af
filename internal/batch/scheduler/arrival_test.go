package scheduler

import (
	"errors"
	"testing"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"

	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// TestImageArrivalsReadsTheEvents: what the event builders write,
// ImageArrivals reads back, for every way an image arrives.
func TestImageArrivalsReadsTheEvents(t *testing.T) {
	const img = "127.0.0.1:8080/demo/images/busybox:v1"
	evs := func(es ...event) []*batchpb.StatusEvent {
		var out []*batchpb.StatusEvent
		for _, e := range es {
			out = append(out, &batchpb.StatusEvent{Type: e.typ, Description: e.desc})
		}
		return out
	}
	cases := []struct {
		name   string
		events []*batchpb.StatusEvent
		want   []ImageArrival
	}{
		{"streamed, then read while running", evs(
			event{"STATUS_CHANGED", "Task state is updated from ASSIGNED to RUNNING on vm."},
			imageReadyEvent(0, img, &RootFS{Method: node.MethodStreamed, Digest: "sha256:aa", Fetched: 1536 << 10}, 1234*time.Millisecond, 2*time.Second),
			imageStreamedBytesEvent(0, streamfs.Stats{WireBytes: 3 << 20, SpanWireBytes: 1 << 20, BackgroundWireBytes: 2 << 20, UncompressedBytes: 9 << 20, ProfileSpans: 2, ProfileBytes: 4096, ProfileHits: 1}),
		), []ImageArrival{{Runnable: 0, Image: img, Digest: "sha256:aa", Method: "streamed", ReadySeconds: 1.234, StartedSeconds: 2, WireBytes: 1536 << 10, RunWireBytes: 3 << 20}}},
		{"shared lazy mount", evs(
			imageReadyEvent(0, img, &RootFS{Method: node.MethodStreamed, Digest: "sha256:aa", Reused: true}, 3*time.Millisecond, 90*time.Millisecond),
		), []ImageArrival{{Image: img, Digest: "sha256:aa", Method: "streamed", ReadySeconds: 0.003, StartedSeconds: 0.09}}},
		{"settled", evs(
			imageReadyEvent(0, img, &RootFS{Method: node.MethodSettled, Digest: "sha256:aa"}, 4*time.Millisecond, 400*time.Millisecond),
		), []ImageArrival{{Image: img, Digest: "sha256:aa", Method: "settled", ReadySeconds: 0.004, StartedSeconds: 0.4}}},
		{"fallback to a pull, second runnable first in the list", evs(
			imageStreamFallbackEvent(1, "the image's layers are not indexed", errors.New("streamfs: no index")),
			imageReadyEvent(1, img, &RootFS{Method: node.MethodPulled, Digest: "sha256:bb", Fetched: 700}, time.Minute+500*time.Millisecond, time.Minute+time.Second),
			imageReadyEvent(0, img, &RootFS{Method: node.MethodPulled, Digest: "sha256:bb", Reused: true}, 0, 10*time.Millisecond),
		), []ImageArrival{
			{Runnable: 0, Image: img, Digest: "sha256:bb", Method: "pulled", StartedSeconds: 0.01},
			{Runnable: 1, Image: img, Digest: "sha256:bb", Method: "pulled", ReadySeconds: 60.5, StartedSeconds: 61, WireBytes: 700, Fallback: "the image's layers are not indexed (streamfs: no index)"},
		}},
		{"never ready", evs(imageStreamFallbackEvent(0, "x", errors.New("y"))), []ImageArrival{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := ImageArrivals(c.events)
			if len(got) != len(c.want) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Errorf("arrival %d:\n got %+v\nwant %+v", i, got[i], c.want[i])
				}
			}
		})
	}
}
