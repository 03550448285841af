package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// report is the outcome of one link: every sample, and what it was
// measured on. It is written as JSON as is.
type report struct {
	Date    time.Time   `json:"date"`
	Commit  string      `json:"commit"`
	Dirty   bool        `json:"dirty"`
	Command string      `json:"command"`
	Machine machine     `json:"machine"`
	Image   imageInfo   `json:"image"`
	Link    linkInfo    `json:"link"`
	Runs    int         `json:"runs"`
	Results []*result   `json:"results"`
	Fanout  *fanoutInfo `json:"fanout,omitempty"`
	// FanoutError says why the concurrent-tasks job has no figures.
	FanoutError string `json:"fanoutError,omitempty"`
	// CachedRead is the warm-cache sequential read (first link only).
	CachedRead      *cachedRead `json:"cachedRead,omitempty"`
	CachedReadError string      `json:"cachedReadError,omitempty"`
}

type machine struct {
	NProc      int    `json:"nproc"`
	Kernel     string `json:"kernel"`
	Go         string `json:"go"`
	Containerd string `json:"containerd"`
	Runc       string `json:"runc"`
	Riffle     string `json:"riffle"`
}

type imageInfo struct {
	Kind              string `json:"kind"`
	Digest            string `json:"digest"`
	Layers            int    `json:"layers"`
	CompressedBytes   int64  `json:"compressedBytes"`
	UncompressedBytes int64  `json:"uncompressedBytes"`
	IndexBytes        int64  `json:"indexBytes"`
	// DetachedIndexBytes is what a node fetches before the first read:
	// the indexes without their windows, as the service sends them
	// (gzipped).
	DetachedIndexBytes int64 `json:"detachedIndexBytes"`
}

type linkInfo struct {
	Mbit  float64 `json:"mbit"`
	RTTms float64 `json:"rttMs"`
}

// result is one case with one workload.
type result struct {
	Case      string `json:"case"`
	CaseName  string `json:"caseName"`
	Workload  string `json:"workload"`
	Command   string `json:"command"`
	FirstLine bool   `json:"timeToFirstLine"`
	// NotAvailable says why the case could not run (a feature the riffle
	// binary lacks); Errors are runs that failed.
	NotAvailable string   `json:"notAvailable,omitempty"`
	Errors       []string `json:"errors,omitempty"`
	Samples      []sample `json:"samples"`
	Median       *sample  `json:"median,omitempty"`
	Min          *sample  `json:"min,omitempty"`
	Max          *sample  `json:"max,omitempty"`
	// RatioToA and RatioToB are median time over the median of case a
	// (containerd full pull) and b (Riffle's full pull), same workload.
	RatioToA float64 `json:"ratioToA,omitempty"`
	RatioToB float64 `json:"ratioToB,omitempty"`
}

func newReport(f flags, s *setupState, l link, cases []benchCase, wls []workload) *report {
	r := &report{
		Date:    time.Now().UTC(),
		Commit:  output("git", "rev-parse", "HEAD"),
		Dirty:   output("git", "status", "--porcelain", "--untracked-files=no") != "",
		Command: strings.Join(os.Args, " "),
		Machine: machine{NProc: runtime.NumCPU(), Kernel: output("uname", "-r"), Go: runtime.Version(),
			Containerd: s.containerdVersion, Runc: firstLine(output("runc", "--version")),
			Riffle: firstLine(output(s.bin, "version"))},
		Image: imageInfo{Kind: f.imageKind, Digest: s.digest, Layers: s.layers, CompressedBytes: s.compressed,
			UncompressedBytes: s.uncompressed, IndexBytes: s.indexBytes, DetachedIndexBytes: s.detachedBytes},
		Link: linkInfo{Mbit: l.mbit, RTTms: float64(l.rtt) / float64(time.Millisecond)},
		Runs: f.runs,
	}
	for _, w := range wls {
		for _, c := range cases {
			r.Results = append(r.Results, &result{Case: c.ID, CaseName: c.Name, Workload: w.Name, Command: w.Cmd, FirstLine: w.FirstLine})
		}
	}
	return r
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func (r *report) get(caseID, wl string) *result {
	for _, x := range r.Results {
		if x.Case == caseID && x.Workload == wl {
			return x
		}
	}
	return nil
}

func (r *report) add(caseID, wl string, s sample) {
	x := r.get(caseID, wl)
	x.Samples = append(x.Samples, s)
}

func (r *report) addError(caseID, wl string, err error) {
	x := r.get(caseID, wl)
	x.Errors = append(x.Errors, err.Error())
}

func (r *report) markUnavailable(caseID, wl, why string) { r.get(caseID, wl).NotAvailable = why }

func (r *report) unavailable(caseID, wl string) bool { return r.get(caseID, wl).NotAvailable != "" }

// summarize fills medians, extremes and ratios.
func (r *report) summarize() {
	for _, x := range r.Results {
		if len(x.Samples) == 0 {
			continue
		}
		x.Median, x.Min, x.Max = summarize(x.Samples)
	}
	for _, x := range r.Results {
		if x.Median == nil {
			continue
		}
		if a := r.get("a", x.Workload); a != nil && a.Median != nil {
			x.RatioToA = x.Median.Seconds / a.Median.Seconds
		}
		if b := r.get("b", x.Workload); b != nil && b.Median != nil {
			x.RatioToB = x.Median.Seconds / b.Median.Seconds
		}
	}
}

// medMinMax returns the median, least and greatest of v (not empty); it
// sorts v.
func medMinMax(v []float64) (med, lo, hi float64) {
	sort.Float64s(v)
	med = v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return med, v[0], v[len(v)-1]
}

// summarize takes the median, min and max of every field on its own.
func summarize(ss []sample) (med, lo, hi *sample) {
	med, lo, hi = &sample{}, &sample{}, &sample{}
	pick := func(get func(sample) float64) (float64, float64, float64) {
		v := make([]float64, len(ss))
		for i, s := range ss {
			v[i] = get(s)
		}
		return medMinMax(v)
	}
	med.Seconds, lo.Seconds, hi.Seconds = pick(func(s sample) float64 { return s.Seconds })
	b1, b2, b3 := pick(func(s sample) float64 { return float64(s.LinkBytes) })
	med.LinkBytes, lo.LinkBytes, hi.LinkBytes = int64(b1), int64(b2), int64(b3)
	for _, k := range sortedKeys(ss[0].CPUSeconds) {
		c1, c2, c3 := pick(func(s sample) float64 { return s.CPUSeconds[k] })
		r1, r2, r3 := pick(func(s sample) float64 { return float64(s.PeakRSS[k]) })
		med.addProc(k, time.Duration(c1*1e9), int64(r1))
		lo.addProc(k, time.Duration(c2*1e9), int64(r2))
		hi.addProc(k, time.Duration(c3*1e9), int64(r3))
	}
	for _, k := range sortedKeys(ss[0].StreamBytes) {
		b1, b2, b3 := pick(func(s sample) float64 { return float64(s.StreamBytes[k]) })
		for _, x := range []struct {
			s *sample
			v float64
		}{{med, b1}, {lo, b2}, {hi, b3}} {
			if x.s.StreamBytes == nil {
				x.s.StreamBytes = map[string]int64{}
			}
			x.s.StreamBytes[k] = int64(x.v)
		}
	}
	return med, lo, hi
}

// print writes the table of medians.
func (r *report) print(out io.Writer) {
	r.summarize()
	fmt.Fprintf(out, "\nlink %g Mbit/s, %g ms RTT; image %s; medians of %d (min–max); ratios of median times\n",
		r.Link.Mbit, r.Link.RTTms, r.Image.Kind, r.Runs)
	tw := tabwriter.NewWriter(out, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tcase\ttime s\t(min–max)\t×a\t×b\tMB over link\tnode CPU s\tpeak RSS MB\t")
	for _, x := range r.Results {
		label := x.Case + " " + x.CaseName
		switch {
		case x.NotAvailable != "":
			fmt.Fprintf(tw, "%s\t%s\tnot available\t\t\t\t\t\t\t\n", x.Workload, label)
		case x.Median == nil && len(x.Errors) == 0:
			fmt.Fprintf(tw, "%s\t%s\tnot run\t\t\t\t\t\t\t\n", x.Workload, label)
		case x.Median == nil:
			fmt.Fprintf(tw, "%s\t%s\tfailed (%d errors)\t\t\t\t\t\t\t\n", x.Workload, label, len(x.Errors))
		default:
			var cpu float64
			var rss []string
			for _, k := range sortedKeys(x.Median.CPUSeconds) {
				cpu += x.Median.CPUSeconds[k]
				rss = append(rss, fmt.Sprintf("%s %.0f", k, float64(x.Median.PeakRSS[k])/1e6))
			}
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t(%.2f–%.2f)\t%s\t%s\t%.1f\t%.1f\t%s\t\n", x.Workload, label,
				x.Median.Seconds, x.Min.Seconds, x.Max.Seconds, ratio(x.RatioToA), ratio(x.RatioToB),
				float64(x.Median.LinkBytes)/1e6, cpu, strings.Join(rss, ", "))
		}
	}
	tw.Flush()
	if f := r.Fanout; f != nil {
		fmt.Fprintf(out, "%d streamed tasks of one image through riffle serve: %.1f MB over the link against %.1f MB for one task (×%.2f); all %d containers started %.1fs after submit, all done %.1fs (one task: started %.1fs, done %.1fs); %s\n",
			f.Tasks, float64(f.Bytes)/1e6, float64(f.OneTaskBytes)/1e6, f.BytesRatio, f.Started, f.AllStartedSeconds,
			f.AllDoneSeconds, f.OneTaskStartedSeconds, f.OneTaskDoneSeconds, f.Note)
	}
	if r.CachedRead != nil {
		fmt.Fprintln(out, r.CachedRead)
	}
	fmt.Fprintln(out)
}

func ratio(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// write saves the report as DIR/startbench-DATE-LINK.json.
func (r *report) write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	name := fmt.Sprintf("startbench-%s-%s-%gmbit-%gms.json", r.Date.Format("2006-01-02T1504Z"), r.Image.Kind, r.Link.Mbit, r.Link.RTTms)
	p := filepath.Join(dir, name)
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	return p, os.WriteFile(p, append(b, '\n'), 0o644)
}
