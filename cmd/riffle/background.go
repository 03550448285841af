package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/riffle-dev/riffle/internal/node"
)

// readyFDFlag is the hidden flag a background mount process gets: the
// descriptor on which it says "ok" once its mount is ready, or the error
// that stopped it.
const readyFDFlag = "ready-fd"

// mountInBackground runs this same mount command again as a detached
// process, waits until that process reports its mount ready (or fails),
// and returns: riffle mount --background.
func mountInBackground(cmd *cobra.Command, args []string, dataDir string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--background: %w", err)
	}
	childArgs := []string{"mount"}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Name == "background" || f.Name == readyFDFlag {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			for _, v := range sv.GetSlice() {
				childArgs = append(childArgs, "--"+f.Name+"="+v)
			}
			return
		}
		childArgs = append(childArgs, "--"+f.Name+"="+f.Value.String())
	})
	childArgs = append(childArgs, "--"+readyFDFlag+"=3", "--")
	childArgs = append(childArgs, args...)

	root := dataDir
	if root == "" {
		root = node.DefaultRoot()
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	logPath := filepath.Join(root, "mount.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("--background: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("--background: %w", err)
	}
	child := exec.Command(exe, childArgs...)
	child.Stdout, child.Stderr = logf, logf
	child.ExtraFiles = []*os.File{w}
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives this terminal
	if err := child.Start(); err != nil {
		r.Close()
		w.Close()
		return fmt.Errorf("--background: %w", err)
	}
	w.Close()
	msg, _ := io.ReadAll(r)
	r.Close()
	if !bytes.HasPrefix(msg, []byte("ok")) {
		_ = child.Wait()
		if len(msg) == 0 {
			return fmt.Errorf("the background mount process exited before its mount was ready; see %s", logPath)
		}
		cmd.SilenceErrors = true
		fmt.Fprintln(cmd.ErrOrStderr(), "Error:", strings.TrimSpace(string(msg)))
		return exitCodeError{1}
	}
	pid := child.Process.Pid
	_ = child.Process.Release()
	fmt.Fprintf(cmd.OutOrStdout(), "mounted %s at %s in the background (pid %d, log %s); riffle unmount %s to stop\n",
		args[0], args[1], pid, logPath, args[1])
	return nil
}

// readyNotifier returns the function a background mount process calls
// once: nil when the mount is ready, else the error that stopped it.
func readyNotifier(fd int) func(error) {
	f := os.NewFile(uintptr(fd), "ready")
	return func(err error) {
		if f == nil {
			return
		}
		if err != nil {
			fmt.Fprintln(f, err.Error())
		} else {
			fmt.Fprintln(f, "ok")
		}
		f.Close()
		f = nil
	}
}
