package logs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

const jobName = "projects/p/locations/l/jobs/j"

func TestWriteRead(t *testing.T) {
	d, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "path.log")
	pw, err := PathWriter(path)
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	tk, err := d.OpenTask(jobName, 0, pw)
	if err != nil {
		t.Fatal(err)
	}
	o, e := tk.Writers()
	o.Write([]byte("out1\nout"))
	e.Write([]byte("err1\n"))
	o.Write([]byte("2\npartial"))
	if err := tk.Close(); err != nil {
		t.Fatal(err)
	}
	read := func(o ReadOptions) string {
		var b bytes.Buffer
		if err := d.Read(context.Background(), jobName, o, &b); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	if got := read(ReadOptions{Task: 0}); got != "out1\nerr1\nout2\npartial\n" {
		t.Errorf("output %q", got)
	}
	if got := read(ReadOptions{Task: 0, Stream: Stdout}); got != "out1\nout2\npartial\n" {
		t.Errorf("stdout %q", got)
	}
	if got := read(ReadOptions{Task: AllTasks, Stream: Stderr, Prefix: true}); got != "task 0: err1\n" {
		t.Errorf("stderr %q", got)
	}
	if b, _ := os.ReadFile(path); string(b) != "out1\nerr1\nout2\npartial\n" {
		t.Errorf("path file %q", b)
	}
	if _, err := d.JobDir("projects/p/locations/l/jobs/.."); err == nil {
		t.Error("a job name with .. was accepted")
	}
}

// TestFollow: lines written concurrently by two writers are never torn,
// and a follower stops at the done mark with everything read.
func TestFollow(t *testing.T) {
	d, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() {
		done <- d.Read(context.Background(), jobName, ReadOptions{Task: AllTasks, Follow: true, Poll: 10 * time.Millisecond}, &out)
	}()
	tk, err := d.OpenTask(jobName, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, s := range []string{"aaaa", "bbbb"} {
		w, _ := tk.Writers()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				w.Write([]byte(s[:2]))
				w.Write([]byte(s[2:] + "\n"))
			}
		}()
	}
	wg.Wait()
	tk.Close()
	d.MarkJobDone(jobName)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follower did not stop")
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 400 {
		t.Fatalf("%d lines", len(lines))
	}
	for _, l := range lines {
		if l != "aaaa" && l != "bbbb" {
			t.Fatalf("torn line %q", l)
		}
	}
	if err := d.Remove(jobName); err != nil {
		t.Fatal(err)
	}
}

// TestJobsAndRemove: Jobs lists the jobs with logs; Remove takes one's
// logs and done markers away, so a new job of that name starts empty.
func TestJobsAndRemove(t *testing.T) {
	d, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other := "projects/p/locations/l/jobs/k"
	for _, j := range []string{jobName, other} {
		tk, err := d.OpenTask(j, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		tk.Printf("line of %s", j)
		tk.Close()
		if err := d.MarkJobDone(j); err != nil {
			t.Fatal(err)
		}
	}
	got, err := d.Jobs()
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	if want := []string{jobName, other}; !slices.Equal(got, want) {
		t.Errorf("Jobs = %q, want %q", got, want)
	}
	if err := d.Remove(jobName); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.Jobs(); !slices.Equal(got, []string{other}) {
		t.Errorf("Jobs after Remove = %q", got)
	}
	// Following the removed name waits for a new job's output.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	if err := d.Read(ctx, jobName, ReadOptions{Task: AllTasks, Follow: true, Poll: 10 * time.Millisecond}, &out); err != context.DeadlineExceeded || out.Len() != 0 {
		t.Errorf("follow after Remove: %v, %q; want it to wait, empty", err, out.String())
	}
}
