package scheduler

import (
	"regexp"
	"slices"
	"strconv"
	"time"

	"cloud.google.com/go/batch/apiv1/batchpb"
)

// ImageArrival is how one container runnable's image arrived for a task, as
// the task's IMAGE_* status events tell it. It is read back from the events
// (the only record of a run) by the code that words them, so the two
// cannot drift apart; byte counts are as precise as the events' wording
// (three significant digits).
type ImageArrival struct {
	// Runnable is the runnable's index in the task.
	Runnable int `json:"runnable"`
	// Image and Digest name the image and its manifest.
	Image  string `json:"image"`
	Digest string `json:"digest"`
	// Method is streamed, pulled or settled.
	Method string `json:"method"`
	// ReadySeconds is the time from the runnable's start to its image
	// being ready; StartedSeconds to its container having started.
	ReadySeconds   float64 `json:"readySeconds"`
	StartedSeconds float64 `json:"startedSeconds"`
	// WireBytes is the compressed bytes fetched to make the image ready;
	// RunWireBytes what a streamed image's mount fetched while the
	// runnable ran.
	WireBytes    int64 `json:"wireBytes"`
	RunWireBytes int64 `json:"runWireBytes"`
	// Fallback is why streaming was asked for and not used, if it was.
	Fallback string `json:"fallback,omitempty"`
}

var (
	readyRe    = regexp.MustCompile(`^Image (.+?) \((\S*)\) was (streamed|pulled|settled)\b.*? for runnable (\d+): ready in (\S+), container started (\S+) after the runnable began; (.*)\.$`)
	wireRe     = regexp.MustCompile(`^(\d+(?:\.\d+)?) (bytes|KiB|MiB|GiB) compressed over the wire`)
	runWireRe  = regexp.MustCompile(`^Runnable (\d+) read its streamed image; while it ran the image's mount fetched (\d+(?:\.\d+)?) (bytes|KiB|MiB|GiB) compressed over the wire`)
	fallbackRe = regexp.MustCompile(`^Runnable (\d+) asked for image streaming, but (.*); pulling the image in full instead\.$`)
)

// ImageArrivals reads the arrivals of a task's images from its status
// events, in runnable order. A runnable whose image never became ready
// (its container did not start) has none.
func ImageArrivals(events []*batchpb.StatusEvent) []ImageArrival {
	byRunnable := map[int]*ImageArrival{}
	var order []int
	get := func(ri int) *ImageArrival {
		a, ok := byRunnable[ri]
		if !ok {
			a = &ImageArrival{Runnable: ri}
			byRunnable[ri] = a
			order = append(order, ri)
		}
		return a
	}
	for _, e := range events {
		d := e.GetDescription()
		switch e.GetType() {
		case evImageStreamed, evImagePulled, evImageSettled:
			m := readyRe.FindStringSubmatch(d)
			if m == nil {
				continue
			}
			a := get(atoi(m[4]))
			a.Image, a.Digest, a.Method = m[1], m[2], m[3]
			a.ReadySeconds, a.StartedSeconds = seconds(m[5]), seconds(m[6])
			if w := wireRe.FindStringSubmatch(m[7]); w != nil {
				a.WireBytes = sizeOf(w[1], w[2])
			}
		case evImageStreamedBytes:
			if m := runWireRe.FindStringSubmatch(d); m != nil {
				get(atoi(m[1])).RunWireBytes += sizeOf(m[2], m[3])
			}
		case evImageStreamFallback:
			if m := fallbackRe.FindStringSubmatch(d); m != nil {
				get(atoi(m[1])).Fallback = m[2]
			}
		}
	}
	slices.Sort(order)
	out := make([]ImageArrival, 0, len(order))
	for _, ri := range order {
		if a := byRunnable[ri]; a.Method != "" {
			out = append(out, *a)
		}
	}
	return out
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

func seconds(s string) float64 {
	d, _ := time.ParseDuration(s)
	return d.Seconds()
}

// sizeOf inverts byteSize.
func sizeOf(num, unit string) int64 {
	f, _ := strconv.ParseFloat(num, 64)
	mult := map[string]float64{"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
	return int64(f * mult)
}
