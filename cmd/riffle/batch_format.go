package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"github.com/googleapis/gax-go/v2/apierror"
	"google.golang.org/api/googleapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/riffle-dev/riffle/internal/batch/job"
)

// batchFormats are the --format values; "value(name)" is gcloud's spelling
// of "print only the names", which scripts use.
var batchFormats = map[string]bool{"table": true, "json": true, "yaml": true, "value(name)": true, "name": true}

// printJobs writes jobs in format (def when empty). JSON and YAML of one
// job are the job itself; of a list command they are a list, even of one.
func printJobs(w io.Writer, format, def string, jobs ...*batchpb.Job) error {
	list := def == "table"
	return printResources(w, format, def, list, jobs, func(tw io.Writer) {
		fmt.Fprintln(tw, "NAME\tLOCATION\tSTATE")
		for _, j := range jobs {
			_, loc, _, _ := job.SplitName(j.GetName())
			fmt.Fprintf(tw, "%s\t%s\t%s\n", j.GetName(), loc, j.GetStatus().GetState())
		}
	}, func(j *batchpb.Job) string { return j.GetName() })
}

// printTasks is printJobs for tasks.
func printTasks(w io.Writer, format, def string, tasks ...*batchpb.Task) error {
	list := def == "table"
	return printResources(w, format, def, list, tasks, func(tw io.Writer) {
		fmt.Fprintln(tw, "NAME\tSTATE")
		for _, t := range tasks {
			fmt.Fprintf(tw, "%s\t%s\n", t.GetName(), t.GetStatus().GetState())
		}
	}, func(t *batchpb.Task) string { return t.GetName() })
}

func printResources[M proto.Message](w io.Writer, format, def string, list bool, items []M, table func(io.Writer), name func(M) string) error {
	if format == "" {
		format = def
	}
	format = strings.TrimSpace(format)
	if fields, ok := valueFields(format); ok && !batchFormats[strings.ToLower(format)] {
		return printValues(w, items, fields, name)
	}
	format = strings.ToLower(format)
	if !batchFormats[format] {
		return fmt.Errorf("batch: --format %q: use table, json, yaml or value(FIELD,...) such as value(name) or value(status.state)", format)
	}
	switch format {
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	case "name", "value(name)":
		for _, it := range items {
			if _, err := fmt.Fprintln(w, name(it)); err != nil {
				return err
			}
		}
		return nil
	}
	var doc []byte
	if list || len(items) != 1 {
		raws := make([]json.RawMessage, len(items))
		for i, it := range items {
			b, err := protojson.Marshal(it)
			if err != nil {
				return fmt.Errorf("batch: encoding %s: %w", name(it), err)
			}
			raws[i] = b
		}
		b, err := json.Marshal(raws)
		if err != nil {
			return err
		}
		doc = b
	} else {
		b, err := protojson.Marshal(items[0])
		if err != nil {
			return fmt.Errorf("batch: encoding %s: %w", name(items[0]), err)
		}
		doc = b
	}
	if format == "yaml" {
		y, err := yaml.JSONToYAML(doc)
		if err != nil {
			return fmt.Errorf("batch: converting to YAML: %w", err)
		}
		_, err = w.Write(y)
		return err
	}
	// protojson's spacing is deliberately unstable; re-indent it so the
	// output is the same on every run.
	var buf bytes.Buffer
	if err := json.Indent(&buf, doc, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// valueFields parses gcloud's value(FIELD[,FIELD...]) format.
func valueFields(format string) ([]string, bool) {
	inner, ok := strings.CutPrefix(format, "value(")
	if !ok || !strings.HasSuffix(inner, ")") {
		return nil, false
	}
	var fields []string
	for _, f := range strings.Split(strings.TrimSuffix(inner, ")"), ",") {
		if f = strings.TrimSpace(f); f != "" {
			fields = append(fields, f)
		}
	}
	return fields, len(fields) > 0
}

// printValues prints, one line per item, the values of fields separated by
// tabs, as gcloud's value() does: a field is a dotted path in the
// resource's JSON (camelCase or snake_case, [N] for a list element, e.g.
// status.state, labels.env, task_groups[0].task_count); a missing field
// prints as empty.
func printValues[M proto.Message](w io.Writer, items []M, fields []string, name func(M) string) error {
	for _, it := range items {
		b, err := protojson.Marshal(it)
		if err != nil {
			return fmt.Errorf("batch: encoding %s: %w", name(it), err)
		}
		var doc any
		if err := json.Unmarshal(b, &doc); err != nil {
			return err
		}
		vals := make([]string, len(fields))
		for i, f := range fields {
			vals[i] = fieldValue(doc, f)
		}
		if _, err := fmt.Fprintln(w, strings.Join(vals, "\t")); err != nil {
			return err
		}
	}
	return nil
}

// fieldValue follows path through doc and formats what it finds.
func fieldValue(doc any, path string) string {
	v := doc
	for _, seg := range strings.Split(path, ".") {
		key, idx, hasIdx := strings.Cut(seg, "[")
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		if x, found := m[key]; found {
			v = x
		} else {
			v = m[snakeToCamel(key)]
		}
		if hasIdx {
			n, err := strconv.Atoi(strings.TrimSuffix(idx, "]"))
			l, ok := v.([]any)
			if err != nil || !ok || n < 0 || n >= len(l) {
				return ""
			}
			v = l[n]
		}
	}
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	case map[string]any, []any:
		b, _ := json.Marshal(x)
		return string(b)
	default:
		return fmt.Sprint(x)
	}
}

func snakeToCamel(s string) string {
	parts := strings.Split(s, "_")
	for i := 1; i < len(parts); i++ {
		if parts[i] != "" {
			parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
		}
	}
	return strings.Join(parts, "")
}

// batchAPIError makes an error from the Batch API readable: the canonical
// code (INVALID_ARGUMENT, NOT_FOUND, ...), the server's message and each
// field violation, or, when the server could not be reached, how to point
// the CLI at one.
func batchAPIError(addr, what string, err error) error {
	if err == nil {
		return nil
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && !errors.As(err, new(*googleapi.Error)) {
		return fmt.Errorf("batch: %s: cannot reach riffle serve at %s: %v\nStart `riffle serve`, or point the CLI at a server with --server HOST:PORT or RIFFLE_SERVER", what, addr, opErr)
	}
	code, msg := "", ""
	var violations []string
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		// The google.rpc.Status envelope, read directly: it has the
		// canonical code name, which the HTTP status alone does not
		// (FAILED_PRECONDITION and INVALID_ARGUMENT are both 400).
		var env struct {
			Error struct {
				Status  string `json:"status"`
				Details []struct {
					Type            string `json:"@type"`
					FieldViolations []struct {
						Field       string `json:"field"`
						Description string `json:"description"`
					} `json:"fieldViolations"`
				} `json:"details"`
			} `json:"error"`
		}
		if json.Unmarshal([]byte(ge.Body), &env) == nil {
			code = env.Error.Status
			for _, d := range env.Error.Details {
				if d.Type == "type.googleapis.com/google.rpc.BadRequest" {
					for _, v := range d.FieldViolations {
						violations = append(violations, v.Field+": "+v.Description)
					}
				}
			}
		}
		msg = ge.Message
	} else if ae, ok := apierror.FromError(err); ok {
		if code == "" && ae.GRPCStatus() != nil {
			code = codeName(ae.GRPCStatus().Code())
		}
		if msg == "" {
			msg = ae.Message()
		}
		if br := ae.Details().BadRequest; br != nil {
			for _, v := range br.GetFieldViolations() {
				violations = append(violations, v.GetField()+": "+v.GetDescription())
			}
		}
	}
	if code == "" && msg == "" {
		return fmt.Errorf("batch: %s: %w", what, err)
	}
	if msg == "" {
		msg = err.Error()
	}
	var b strings.Builder
	switch {
	case len(violations) > 1 && msg == strings.Join(violations, "; "):
		// Riffle's message is the violations joined; one a line reads
		// better.
		fmt.Fprintf(&b, "batch: %s: %s: %d problems:", what, code, len(violations))
	case len(violations) == 1 && violations[0] == msg:
		violations = nil
		fallthrough
	default:
		fmt.Fprintf(&b, "batch: %s: %s: %s", what, code, msg)
	}
	for _, v := range violations {
		fmt.Fprintf(&b, "\n  - %s", v)
	}
	return &batchError{msg: b.String(), err: err}
}

// batchError keeps the API error reachable (errors.As) under a readable
// message.
type batchError struct {
	msg string
	err error
}

func (e *batchError) Error() string { return e.msg }
func (e *batchError) Unwrap() error { return e.err }

// codeName spells a gRPC code as google.rpc.Code does (INVALID_ARGUMENT).
func codeName(c codes.Code) string {
	if c == codes.Canceled {
		return "CANCELLED"
	}
	var b strings.Builder
	for i, r := range c.String() {
		if unicode.IsUpper(r) && i > 0 {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}
