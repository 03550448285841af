package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// LogFiles are a task's stdout and stderr files. Being *os.File, they go to
// the container directly: no copying through Riffle, and the output survives
// a Riffle crash.
type LogFiles struct {
	Stdout, Stderr *os.File
}

// OpenLogFiles opens (appending, creating as needed) dir/name.stdout.log and
// dir/name.stderr.log; pass Stdout and Stderr to Start or Run.
func OpenLogFiles(dir, name string) (*LogFiles, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	open := func(stream string) (*os.File, error) {
		f, err := os.OpenFile(filepath.Join(dir, name+"."+stream+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("runtime: %w", err)
		}
		return f, nil
	}
	out, err := open("stdout")
	if err != nil {
		return nil, err
	}
	errF, err := open("stderr")
	if err != nil {
		_ = out.Close()
		return nil, err
	}
	return &LogFiles{Stdout: out, Stderr: errF}, nil
}

// Close closes both files.
func (l *LogFiles) Close() error {
	return errors.Join(l.Stdout.Close(), l.Stderr.Close())
}
