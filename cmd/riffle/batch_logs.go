package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// batchLogsPath is where riffle serve serves task logs (not part of the
// Batch API, which leaves logs to Cloud Logging):
//
//	GET /riffle/v1/logs/{projects/P/locations/L/jobs/J}[?task=N][&follow=true]
//
// The response is text/plain: the task's stdout and stderr lines, or,
// without task=, every task's lines prefixed "task N: ". With follow the
// stream stays open until the job ends.
const batchLogsPath = "/riffle/v1/logs/"

func newBatchLogsCmd(o *batchOpts) *cobra.Command {
	var (
		task   int64
		follow bool
	)
	cmd := &cobra.Command{
		Use:   "logs JOB [--task N] [--follow]",
		Short: "Print the stdout and stderr of a job's tasks",
		Long: `logs prints what the job's runnables wrote to stdout and stderr. Without
--task it prints every task's lines, each prefixed "task N: "; with --task
it prints that task's lines as written. --follow keeps printing new lines
until the job ends (or Ctrl-C).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := o.jobName(args[0])
			if err != nil {
				return err
			}
			q := url.Values{}
			if cmd.Flags().Changed("task") {
				if task < 0 {
					return fmt.Errorf("batch: --task %d: give a task index (0, 1, ...)", task)
				}
				q.Set("task", strconv.FormatInt(task, 10))
			}
			if follow {
				q.Set("follow", "true")
			}
			addr := o.addr()
			u := url.URL{Scheme: serverScheme(o.dataDir), Host: addr, Path: batchLogsPath + name, RawQuery: q.Encode()}
			return streamBatchLogs(cmd, addr, name, u.String(), o.dataDir)
		},
	}
	cmd.Flags().Int64Var(&task, "task", 0, "only this task's logs (its index: 0, 1, ...)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until the job ends")
	return cmd
}

func streamBatchLogs(cmd *cobra.Command, addr, name, u, dataDir string) error {
	ctx := cmd.Context()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("batch: logs of %s: %w", name, err)
	}
	req.Header.Set("User-Agent", "riffle/"+version)

	// No client timeout: a followed stream lasts as long as the job.
	resp, err := serverHTTPClient(dataDir).Do(req)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) {
			return fmt.Errorf("batch: logs of %s: cannot reach riffle serve at %s: %v\nStart `riffle serve`, or point the CLI at a server with --server HOST:PORT or RIFFLE_SERVER", name, addr, opErr)
		}
		return fmt.Errorf("batch: logs of %s: %w", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return logsHTTPError(name, resp)
	}
	if _, err := io.Copy(cmd.OutOrStdout(), resp.Body); err != nil {
		if ctx.Err() != nil {
			return nil // interrupted while following
		}
		return fmt.Errorf("batch: logs of %s: stream cut: %w", name, err)
	}
	return nil
}

// logsHTTPError reads an error response: the google.rpc.Status envelope
// the rest of the server uses, or else plain text.
func logsHTTPError(name string, resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var env struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			Status  string `json:"status"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && env.Error.Message != "" {
		st := env.Error.Status
		if st == "" {
			st = "HTTP " + strconv.Itoa(resp.StatusCode)
		}
		return fmt.Errorf("batch: logs of %s: %s: %s", name, st, env.Error.Message)
	}
	msg := strings.TrimSpace(string(body))
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	if resp.StatusCode == http.StatusNotFound && !strings.Contains(msg, "jobs/") {
		msg += " (is the job's name right? does this riffle serve serve logs?)"
	}
	return fmt.Errorf("batch: logs of %s: HTTP %d: %s", name, resp.StatusCode, msg)
}
