package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// fanoutInfo is the concurrent-tasks measurement: one Batch job of Tasks
// streamed tasks of the image through `riffle serve` on a cold node,
// against a job of one task on another cold node.
type fanoutInfo struct {
	Tasks   int `json:"tasks"`
	Started int `json:"containersStarted"`
	// Bytes and OneTaskBytes went over the link (registry and index
	// service), each for its whole job and until the link was quiet after
	// it (the node's layer streams done: the image settled). Results
	// written before commit "startbench: fanout counts bytes until the
	// link is quiet" stop at the end of the job.
	Bytes        int64   `json:"linkBytes"`
	OneTaskBytes int64   `json:"oneTaskLinkBytes"`
	BytesRatio   float64 `json:"bytesRatio"`
	// AllStartedSeconds is from submit until the last task's container
	// started (its IMAGE_STREAMED or IMAGE_PULLED event).
	AllStartedSeconds     float64 `json:"allStartedSeconds"`
	AllDoneSeconds        float64 `json:"allDoneSeconds"`
	OneTaskStartedSeconds float64 `json:"oneTaskStartedSeconds"`
	OneTaskDoneSeconds    float64 `json:"oneTaskDoneSeconds"`
	// MaxRunning is the most containers that ran at once, from the events.
	MaxRunning int `json:"maxRunning"`
	// ServeCPUSeconds and ServePeakRSS are riffle serve's (its cgroup,
	// without the containers' nested groups), for the job of Tasks tasks.
	// Results written before commit "startbench: serve CPU without its
	// containers" include the containers' CPU.
	ServeCPUSeconds float64 `json:"serveCpuSeconds"`
	ServePeakRSS    int64   `json:"servePeakRSSBytes"`
	Streamed        int     `json:"streamed"`
	Pulled          int     `json:"pulled"`
	// Settled counts tasks that started after the image had settled on the
	// node (overlayfs over its extracted layers, IMAGE_SETTLED).
	Settled int    `json:"settled"`
	Note    string `json:"note"`
}

// fanout runs the one-task job and the n-task job, each on a fresh
// riffle serve (cold node), with the python workload when the image has
// it, else echo.
func fanout(ctx context.Context, e *env, n int) (*fanoutInfo, error) {
	cmd := "echo hello"
	if e.f.imageKind == "debian-python" {
		cmd = `python3 -c "import numpy, scipy, pandas"`
	}
	fmt.Printf("  fanout: 1 task, then %d tasks of %q through riffle serve\n", n, cmd)
	one, err := serveJob(ctx, e, 1, cmd)
	if err != nil {
		return nil, fmt.Errorf("one-task job: %w", err)
	}
	all, err := serveJob(ctx, e, n, cmd)
	if err != nil {
		return nil, fmt.Errorf("%d-task job: %w", n, err)
	}
	all.OneTaskBytes = one.Bytes
	all.OneTaskStartedSeconds = one.AllStartedSeconds
	all.OneTaskDoneSeconds = one.AllDoneSeconds
	if one.Bytes > 0 {
		all.BytesRatio = float64(all.Bytes) / float64(one.Bytes)
	}
	all.Note = fmt.Sprintf("at most %d containers ran at once (nproc %d); %d streamed, %d settled, %d pulled", all.MaxRunning, nproc(), all.Streamed, all.Settled, all.Pulled)
	return all, nil
}

func nproc() int {
	n, _ := strconv.Atoi(output("nproc"))
	return n
}

// serveJob starts a riffle serve on a new data directory (with the image's
// indexes in its index service, as if the image had been pushed to it),
// submits a job of n tasks, and waits for it to end.
func serveJob(ctx context.Context, e *env, n int, cmd string) (*fanoutInfo, error) {
	data, err := e.scratch("serve")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(data)
	if err := copyDir(filepath.Join(e.indexDir, "sha256"), filepath.Join(data, "indexes", "sha256")); err != nil {
		return nil, err
	}
	p, err := startProc(ctx, "riffle-serve", os.Environ(), e.bin, "serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	defer func() {
		p.stop(30 * time.Second)
		unmountUnder(data)
		p.grp.remove()
	}()
	go func() {
		for range p.lines {
		}
	}()
	base, err := waitServe(ctx, p, data)
	if err != nil {
		return nil, err
	}
	// Written by riffle serve at its first start, for the local CLI.
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		return nil, fmt.Errorf("startbench: riffle serve's admin token: %w", err)
	}
	token := strings.TrimSpace(string(tok))
	const parent = "/v1/projects/bench/locations/us-central1/jobs"
	job := map[string]any{"taskGroups": []any{map[string]any{
		"taskCount": strconv.Itoa(n), "parallelism": strconv.Itoa(n),
		"taskSpec": map[string]any{"runnables": []any{map[string]any{"container": map[string]any{
			"imageUri": e.ref, "entrypoint": "/bin/sh", "commands": []string{"-c", cmd}, "enableImageStreaming": true,
		}}},
			// Small enough that the node runs every task at once, as the
			// benchmark means to start them (the default, 2 CPUs a task,
			// ran one at a time here).
			"computeResource": map[string]any{"cpuMilli": strconv.Itoa(2000 / n), "memoryMib": "256"},
		},
	}}}
	body, _ := json.Marshal(job)
	dropCaches()
	// The containers' cgroups nest in riffle serve's ("riffle/<id>"); the
	// "riffle" group outlives them and keeps their CPU, which is taken out.
	ctrs := group(filepath.Join(string(p.grp), "riffle"))
	b0, t0, cpu0, ctr0 := e.link.Bytes(), time.Now(), p.grp.cpu(), ctrs.cpu()
	if err := call(ctx, token, http.MethodPost, base+parent+"?jobId=fanout", body, nil); err != nil {
		return nil, err
	}
	var done time.Duration
	for {
		var j struct {
			Status struct{ State string } `json:"status"`
		}
		if err := call(ctx, token, http.MethodGet, base+parent+"/fanout", nil, &j); err != nil {
			return nil, err
		}
		if j.Status.State == "SUCCEEDED" || j.Status.State == "FAILED" {
			done = time.Since(t0)
			if j.Status.State == "FAILED" {
				return nil, fmt.Errorf("startbench: the job failed; see its task events")
			}
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	// The node goes on streaming the image's layers after the job (the
	// image settles for later tasks), for one task as for many: both jobs
	// count the link until it has been quiet for a while, so they are
	// compared at the same point, the image complete on the node.
	if err := waitLinkQuiet(ctx, e, 3*time.Second, 3*time.Minute); err != nil {
		return nil, err
	}
	info := &fanoutInfo{Tasks: n, Bytes: e.link.Bytes() - b0, AllDoneSeconds: done.Seconds(),
		ServeCPUSeconds: (p.grp.cpu() - cpu0 - (ctrs.cpu() - ctr0)).Seconds(), ServePeakRSS: vmHWM(p.cmd.Process.Pid)}
	if err := taskTimes(ctx, token, base+parent+"/fanout/taskGroups/group0/tasks?pageSize=1000", t0, info); err != nil {
		return nil, err
	}
	fmt.Printf("  fanout: %d tasks: %.1f MB over the link, all started %.1fs, done %.1fs\n", n, float64(info.Bytes)/1e6, info.AllStartedSeconds, info.AllDoneSeconds)
	return info, nil
}

// waitLinkQuiet waits until no byte has crossed the link for quiet, at
// most limit.
func waitLinkQuiet(ctx context.Context, e *env, quiet, limit time.Duration) error {
	last, since, end := e.link.Bytes(), time.Now(), time.Now().Add(limit)
	for time.Since(since) < quiet && time.Now().Before(end) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		if b := e.link.Bytes(); b != last {
			last, since = b, time.Now()
		}
	}
	return nil
}

// waitServe waits for riffle serve to write its address and answer.
func waitServe(ctx context.Context, p *proc, data string) (string, error) {
	for range 600 {
		if b, err := os.ReadFile(filepath.Join(data, "serve.addr")); err == nil {
			base := "http://" + strings.TrimSpace(string(b))
			if resp, err := http.Get(base + "/healthz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return base, nil
				}
			}
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("startbench: riffle serve exited: %v\n%s", p.err, p.tail)
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("startbench: riffle serve did not answer within a minute\n%s", p.tail)
}

// taskTimes reads every task's events: when its container started and when
// it ended, relative to t0.
func taskTimes(ctx context.Context, token, url string, t0 time.Time, info *fanoutInfo) error {
	var list struct {
		Tasks []struct {
			Status struct {
				StatusEvents []struct {
					Type      string    `json:"type"`
					EventTime time.Time `json:"eventTime"`
					TaskState string    `json:"taskState"`
				} `json:"statusEvents"`
			} `json:"status"`
		} `json:"tasks"`
	}
	if err := call(ctx, token, http.MethodGet, url, nil, &list); err != nil {
		return err
	}
	type span struct{ start, end time.Time }
	var spans []span
	for _, t := range list.Tasks {
		var sp span
		for _, ev := range t.Status.StatusEvents {
			switch {
			case ev.Type == "IMAGE_STREAMED" || ev.Type == "IMAGE_PULLED" || ev.Type == "IMAGE_SETTLED":
				sp.start = ev.EventTime
				switch ev.Type {
				case "IMAGE_STREAMED":
					info.Streamed++
				case "IMAGE_SETTLED":
					info.Settled++
				default:
					info.Pulled++
				}
			case ev.TaskState == "SUCCEEDED" || ev.TaskState == "FAILED":
				sp.end = ev.EventTime
			}
		}
		if sp.start.IsZero() {
			continue
		}
		info.Started++
		info.AllStartedSeconds = max(info.AllStartedSeconds, sp.start.Sub(t0).Seconds())
		spans = append(spans, sp)
	}
	// The most containers alive at once: sweep over start and end times.
	type edge struct {
		at time.Time
		d  int
	}
	var edges []edge
	for _, s := range spans {
		edges = append(edges, edge{s.start, 1})
		if !s.end.IsZero() {
			edges = append(edges, edge{s.end, -1})
		}
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].d < edges[j].d
		}
		return edges[i].at.Before(edges[j].at)
	})
	cur := 0
	for _, ed := range edges {
		cur += ed.d
		info.MaxRunning = max(info.MaxRunning, cur)
	}
	return nil
}

// call does one JSON request; out may be nil.
// call makes a Batch REST call to riffle serve with token (its local admin
// token: every endpoint needs a role).
func call(ctx context.Context, token, method, url string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("startbench: %s %s: %s: %s", method, url, resp.Status, b)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// copyDir copies the regular files of src into dst.
func copyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, de := range ents {
		if !de.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, de.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, de.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}
