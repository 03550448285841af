package logs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrBadName is returned for a job name that is not
// projects/P/locations/L/jobs/J.
var ErrBadName = errors.New("logs: not a job name (projects/P/locations/L/jobs/J)")

// Stream selects what Read returns.
type Stream int

const (
	// Output is stdout and stderr interleaved by line.
	Output Stream = iota
	// Stdout is the standard output alone.
	Stdout
	// Stderr is the standard error alone.
	Stderr
)

func (s Stream) file() string {
	switch s {
	case Stdout:
		return "stdout.log"
	case Stderr:
		return "stderr.log"
	}
	return "output.log"
}

const doneFile = "done"

// maxLine bounds how much of a line without a newline is buffered before it
// is written anyway, so a program printing no newlines cannot grow memory.
const maxLine = 64 << 10

// Dir is the root of the task logs. It is safe for concurrent use.
type Dir struct {
	root string
}

// New returns the logs kept under root, creating it.
func New(root string) (*Dir, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	return &Dir{root: root}, nil
}

// Root is the directory the logs are kept in.
func (d *Dir) Root() string { return d.root }

// JobDir returns the directory of a job's logs.
func (d *Dir) JobDir(jobName string) (string, error) {
	p := strings.Split(jobName, "/")
	if len(p) != 6 || p[0] != "projects" || p[2] != "locations" || p[4] != "jobs" {
		return "", fmt.Errorf("%w: %q", ErrBadName, jobName)
	}
	for _, s := range []string{p[1], p[3], p[5]} {
		if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/\x00") {
			return "", fmt.Errorf("%w: %q", ErrBadName, jobName)
		}
	}
	return filepath.Join(d.root, p[1], p[3], p[5]), nil
}

func (d *Dir) taskDir(jobName string, index int64) (string, error) {
	j, err := d.JobDir(jobName)
	if err != nil {
		return "", err
	}
	return filepath.Join(j, "task-"+strconv.FormatInt(index, 10)), nil
}

// Task is where one task's output goes. Get a pair of writers per runnable
// with Writers; close the Task when the task attempt ends.
type Task struct {
	mu          sync.Mutex // serialises whole lines into output and extra
	out, so, se *os.File
	extra       io.Writer
	closeOnce   sync.Once
	closeErr    error
	wmu         sync.Mutex
	writers     []*lineWriter
}

// OpenTask opens (appending) the log files of task index of jobName.
// extra, when not nil, also receives every line (the logsPolicy PATH
// file); it must be safe for concurrent use by several tasks, which
// PathWriter's result is.
func (d *Dir) OpenTask(jobName string, index int64, extra io.Writer) (*Task, error) {
	dir, err := d.taskDir(jobName, index)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	// A task that runs again (a retry, a restart) is not done any more;
	// a marker left behind would stop its followers early.
	if err := os.Remove(filepath.Join(dir, doneFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("logs: %w", err)
	}
	t := &Task{extra: extra}
	for _, f := range []struct {
		name string
		dst  **os.File
	}{{"output.log", &t.out}, {"stdout.log", &t.so}, {"stderr.log", &t.se}} {
		fh, err := os.OpenFile(filepath.Join(dir, f.name), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("logs: %w", err)
		}
		*f.dst = fh
	}
	return t, nil
}

// Writers returns the stdout and stderr writers of one runnable. They are
// not safe for concurrent use each (give each producer its own pair), but
// any number of pairs may write at once. Close them, or the Task, to
// write a partial last line.
func (t *Task) Writers() (stdout, stderr io.WriteCloser) {
	o := &lineWriter{t: t, raw: t.so}
	e := &lineWriter{t: t, raw: t.se}
	t.wmu.Lock()
	t.writers = append(t.writers, o, e)
	t.wmu.Unlock()
	return o, e
}

// Printf writes a line of Riffle's own to output.log (and the PATH file),
// e.g. why a runnable was skipped. It goes to neither stream file.
func (t *Task) Printf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	if !strings.HasSuffix(line, "\n") {
		line += "\n"
	}
	t.writeLine([]byte(line))
}

func (t *Task) writeLine(p []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.out != nil {
		_, _ = t.out.Write(p)
	}
	if t.extra != nil {
		_, _ = t.extra.Write(p)
	}
}

// Close flushes every writer's partial line and closes the files.
func (t *Task) Close() error {
	t.closeOnce.Do(func() {
		t.wmu.Lock()
		ws := t.writers
		t.wmu.Unlock()
		for _, w := range ws {
			_ = w.Close()
		}
		var errs []error
		for _, f := range []*os.File{t.out, t.so, t.se} {
			if f != nil {
				errs = append(errs, f.Close())
			}
		}
		t.closeErr = errors.Join(errs...)
	})
	return t.closeErr
}

// lineWriter writes bytes through to its stream file at once and whole
// lines to the shared files.
type lineWriter struct {
	t   *Task
	raw *os.File
	mu  sync.Mutex
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.raw.Write(p); err != nil {
		return 0, err
	}
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.t.writeLine(w.buf[:i+1])
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) >= maxLine {
		w.t.writeLine(append(w.buf, '\n'))
		w.buf = nil
	}
	if len(w.buf) == 0 {
		w.buf = nil // let a large backing array go
	}
	return len(p), nil
}

func (w *lineWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.t.writeLine(append(w.buf, '\n'))
		w.buf = nil
	}
	return nil
}

// PathWriter opens path (logsPolicy PATH's logsPath) for appending and
// returns a writer safe for concurrent use, for OpenTask's extra.
func PathWriter(path string) (io.WriteCloser, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("logs: logsPolicy.logsPath %q must be an absolute path", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("logs: logsPolicy.logsPath: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("logs: logsPolicy.logsPath: %w", err)
	}
	return &lockedFile{f: f}, nil
}

type lockedFile struct {
	mu sync.Mutex
	f  *os.File
}

func (l *lockedFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

func (l *lockedFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// MarkTaskDone records that a task reached a final state: followers of
// its logs stop once they have read everything.
func (d *Dir) MarkTaskDone(jobName string, index int64) error {
	dir, err := d.taskDir(jobName, index)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	return touch(filepath.Join(dir, doneFile))
}

// MarkJobDone records that a job reached a final state.
func (d *Dir) MarkJobDone(jobName string) error {
	dir, err := d.JobDir(jobName)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	return touch(filepath.Join(dir, doneFile))
}

func touch(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	return f.Close()
}

// Remove deletes a job's logs (the job was deleted).
func (d *Dir) Remove(jobName string) error {
	dir, err := d.JobDir(jobName)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	// Drop the now empty project and location directories too, best effort.
	_ = os.Remove(filepath.Dir(dir))
	_ = os.Remove(filepath.Dir(filepath.Dir(dir)))
	return nil
}

// Jobs lists the names of the jobs that have logs here, in no particular
// order.
func (d *Dir) Jobs() ([]string, error) {
	var out []string
	projects, err := os.ReadDir(d.root)
	if err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	for _, p := range projects {
		locs, err := os.ReadDir(filepath.Join(d.root, p.Name()))
		if err != nil {
			continue // not a directory: not ours
		}
		for _, l := range locs {
			jobs, err := os.ReadDir(filepath.Join(d.root, p.Name(), l.Name()))
			if err != nil {
				continue
			}
			for _, j := range jobs {
				if j.IsDir() {
					out = append(out, "projects/"+p.Name()+"/locations/"+l.Name()+"/jobs/"+j.Name())
				}
			}
		}
	}
	return out, nil
}

// ReadOptions select what Read writes.
type ReadOptions struct {
	// Task is the task index to read; AllTasks (-1) reads every task.
	Task int64
	// Stream picks interleaved output (the default), stdout or stderr.
	Stream Stream
	// Follow keeps reading as output arrives until the task (or, for all
	// tasks, the job) is done, or ctx ends.
	Follow bool
	// Prefix starts each line with "task N: ", useful with AllTasks.
	Prefix bool
	// Poll is how often a follower looks for new output (default 200ms).
	Poll time.Duration
}

// AllTasks is ReadOptions.Task for every task of the job.
const AllTasks = -1

// Read writes a job's logs to w. Without Follow it writes what is there
// (tasks in index order) and returns. With Follow it keeps going, lines
// of different tasks interleaved as they arrive, until the task or job is
// marked done and everything is written, the job's logs are removed, or
// ctx ends (then ctx's error is returned).
func (d *Dir) Read(ctx context.Context, jobName string, opts ReadOptions, w io.Writer) error {
	jdir, err := d.JobDir(jobName)
	if err != nil {
		return err
	}
	if opts.Poll <= 0 {
		opts.Poll = 200 * time.Millisecond
	}
	readers := map[int64]*tailer{}
	defer func() {
		for _, r := range readers {
			r.close()
		}
	}()
	seen := false
	for {
		// Decide on "done" before reading, so output written just before
		// the marker is never missed.
		done := exists(filepath.Join(jdir, doneFile))
		if opts.Task != AllTasks && !done {
			done = exists(filepath.Join(jdir, "task-"+strconv.FormatInt(opts.Task, 10), doneFile))
		}
		idx, err := taskIndexes(jdir, opts.Task)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				return err
			}
			if seen {
				return nil // the job's logs were removed: it was deleted
			}
		} else {
			seen = true
		}
		for _, i := range idx {
			r := readers[i]
			if r == nil {
				r = &tailer{path: filepath.Join(jdir, "task-"+strconv.FormatInt(i, 10), opts.Stream.file())}
				if opts.Prefix {
					r.prefix = "task " + strconv.FormatInt(i, 10) + ": "
				}
				readers[i] = r
			}
			// Without Follow, or when done, everything goes, partial last
			// lines included.
			if err := r.copy(w, !opts.Follow || done); err != nil {
				return err
			}
		}
		if !opts.Follow || done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(opts.Poll):
		}
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func taskIndexes(jdir string, only int64) ([]int64, error) {
	ents, err := os.ReadDir(jdir)
	if err != nil {
		return nil, err
	}
	var out []int64
	for _, e := range ents {
		s, ok := strings.CutPrefix(e.Name(), "task-")
		if !ok || !e.IsDir() {
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || (only != AllTasks && n != only) {
			continue
		}
		out = append(out, n)
	}
	sort.Slice(out, func(a, b int) bool { return out[a] < out[b] })
	return out, nil
}

// tailer reads one log file from where it left off.
type tailer struct {
	path    string
	prefix  string
	f       *os.File
	pending []byte // a partial line held back while following
}

func (r *tailer) close() {
	if r.f != nil {
		_ = r.f.Close()
	}
}

func (r *tailer) copy(w io.Writer, all bool) error {
	if r.f == nil {
		f, err := os.Open(r.path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return fmt.Errorf("logs: %w", err)
		}
		r.f = f
	}
	br := bufio.NewReaderSize(r.f, 64<<10)
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 {
			r.pending = append(r.pending, chunk...)
			if chunk[len(chunk)-1] == '\n' || len(r.pending) >= maxLine {
				if err := r.emit(w); err != nil {
					return err
				}
			}
		}
		if err == nil || errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			break
		}
		return fmt.Errorf("logs: %w", err)
	}
	if all && len(r.pending) > 0 {
		if r.pending[len(r.pending)-1] != '\n' {
			r.pending = append(r.pending, '\n')
		}
		return r.emit(w)
	}
	return nil
}

func (r *tailer) emit(w io.Writer) error {
	var err error
	if r.prefix != "" {
		_, err = io.WriteString(w, r.prefix)
	}
	if err == nil {
		_, err = w.Write(r.pending)
	}
	r.pending = r.pending[:0]
	return err
}
