package job

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"cloud.google.com/go/batch/apiv1/batchpb"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Mode selects how forgiving Parse is.
type Mode int

const (
	// Strict accepts exactly what the Batch REST API accepts: proto-JSON
	// with lowerCamel or snake_case field names, int64 as strings or
	// numbers, enums as names or numbers. Unknown fields, a single value
	// where a list is expected and values of the wrong type are refused
	// with an error naming the field path.
	Strict Mode = iota
	// Lenient accepts what `gcloud batch jobs submit --config` accepts on
	// top of Strict: YAML, a single value where a list is expected (it is
	// wrapped into a one-element list), scalars written as the wrong JSON
	// type when they convert losslessly (8 for "8", "true" for true), and
	// enum names in any case. Unknown fields are still refused: silently
	// dropping a misspelt field would run a different job than the one
	// written.
	Lenient
)

// MaxConfigSize is the largest job config Parse accepts. Batch's own limit
// on a request is far below this; it only bounds memory.
const MaxConfigSize = 4 << 20

// ErrInvalid is matched (errors.Is) by every error Parse, Validate and
// ValidateJobID return because of the input rather than a bug.
var ErrInvalid = errors.New("job: invalid job config")

// FieldError is an error about one field of a job config. Path uses the
// lowerCamel JSON names and list indexes, e.g.
// "taskGroups[0].taskSpec.runnables[1].container.imageUri"; it is empty
// for errors about the config as a whole.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return "job: " + e.Msg
	}
	return "job: " + e.Path + ": " + e.Msg
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// FieldErrors is a list of field errors, reported together so a user fixes
// a config in one round.
type FieldErrors []*FieldError

func (es FieldErrors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = strings.TrimPrefix(e.Error(), "job: ")
	}
	return "job: " + strings.Join(parts, "; ")
}

// Is makes errors.Is(err, ErrInvalid) true.
func (es FieldErrors) Is(target error) bool { return target == ErrInvalid }

func (es FieldErrors) err() error {
	if len(es) == 0 {
		return nil
	}
	sort.SliceStable(es, func(i, j int) bool { return es[i].Path < es[j].Path })
	return es
}

// Parse decodes a job config into a Job. It only checks the shape against
// the schema; call Validate for the semantic checks and Prepare to fill in
// defaults.
func Parse(data []byte, mode Mode) (*batchpb.Job, error) {
	j := new(batchpb.Job)
	if err := Unmarshal(data, j, mode); err != nil {
		return nil, err
	}
	return j, nil
}

// Unmarshal decodes a proto-JSON (or, in Lenient mode, YAML) document into
// m, with the same path-naming errors as Parse. The API uses it for every
// request body, not only jobs.
func Unmarshal(data []byte, m proto.Message, mode Mode) error {
	if len(data) > MaxConfigSize {
		return &FieldError{Msg: fmt.Sprintf("config is %d bytes; the limit is %d", len(data), MaxConfigSize)}
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(data) {
		// The decoders would turn the bad bytes into U+FFFD and the job
		// would run with labels and commands nobody wrote.
		return &FieldError{Msg: notUTF8(data)}
	}
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return &FieldError{Msg: "config is empty; give a JSON or YAML object"}
	}
	if trimmed[0] != '{' {
		if mode != Lenient {
			return &FieldError{Msg: "config must be a JSON object ({...}); the API takes proto-JSON, not YAML"}
		}
		v, err := fromYAML(data)
		if err != nil {
			return &FieldError{Msg: "config is neither JSON nor valid YAML: " + err.Error()}
		}
		return unmarshalValue(v, m, mode)
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return &FieldError{Msg: "malformed JSON: " + jsonErr(trimmed, err)}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &FieldError{Msg: "malformed JSON: unexpected data after the top-level object"}
	}
	return unmarshalValue(v, m, mode)
}

func unmarshalValue(v any, m proto.Message, mode Mode) error {
	obj, ok := v.(map[string]any)
	if !ok {
		return &FieldError{Msg: "config must be an object at the top level"}
	}
	md := m.ProtoReflect().Descriptor()
	// A document sharing no field with the message is likely another
	// kind of file altogether; say so rather than list every key.
	if len(obj) >= 3 && !anyKnown(obj, md) {
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if len(keys) > 5 {
			keys = append(keys[:5], "...")
		}
		return &FieldError{Msg: fmt.Sprintf("this is not a %s: none of its fields (%s) belong to one", md.Name(), strings.Join(keys, ", "))}
	}
	n := &normalizer{lenient: mode == Lenient}
	out := n.message(obj, md, "")
	if err := n.errs.err(); err != nil {
		return err
	}
	js, err := json.Marshal(out)
	if err != nil {
		return fmt.Errorf("job: re-encoding config: %w", err)
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, m); err != nil {
		// The walk above catches everything it knows of; protojson is the
		// last word on what it does not.
		// Its "(line 1:N)" counts in the re-encoded one-line JSON, not
		// the user's file: drop it rather than point at the wrong line.
		return &FieldError{Msg: protoPosRE.ReplaceAllString(err.Error(), "")}
	}
	return nil
}

// notUTF8 says where data stops being UTF-8.
func notUTF8(data []byte) string {
	off := 0
	for off < len(data) {
		r, n := utf8.DecodeRune(data[off:])
		if r == utf8.RuneError && n <= 1 {
			break
		}
		off += n
	}
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := off - bytes.LastIndexByte(data[:off], '\n')
	return fmt.Sprintf("line %d, column %d: byte 0x%02x is not valid UTF-8; every string (labels, commands, environment) must be UTF-8 text", line, col, data[off])
}

// protoPosRE matches protojson's error prefix ("proto: (line 1:15): ",
// whose spaces protobuf-go randomizes between ASCII and U+00A0).
var protoPosRE = regexp.MustCompile(`^proto:[\s\x{00a0}]*(\(line \d+:\d+\):[\s\x{00a0}]*)?`)

// jsonErr turns encoding/json's error into one with a line and column.
func jsonErr(data []byte, err error) string {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "unexpected end of input"
	}
	if off < 0 || off > int64(len(data)) {
		return err.Error()
	}
	line := 1 + bytes.Count(data[:off], []byte("\n"))
	col := max(1, off-int64(bytes.LastIndexByte(data[:off], '\n'))-1)
	return fmt.Sprintf("line %d, column %d: %v", line, col, err)
}

type normalizer struct {
	lenient bool
	errs    FieldErrors
}

func (n *normalizer) fail(path, format string, args ...any) {
	if len(n.errs) < 50 {
		n.errs = append(n.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// wellKnown are message types protojson writes as JSON scalars or takes as
// any JSON value.
func wellKnown(md protoreflect.MessageDescriptor) bool {
	return md.ParentFile().Package() == "google.protobuf"
}

func (n *normalizer) message(obj map[string]any, md protoreflect.MessageDescriptor, path string) map[string]any {
	out := make(map[string]any, len(obj))
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fields := md.Fields()
	oneofs := map[protoreflect.FullName]string{}
	for _, k := range keys {
		fd := fields.ByJSONName(k)
		if fd == nil {
			fd = fields.ByName(protoreflect.Name(k))
		}
		if fd == nil {
			n.fail(join(path, k), "unknown field; %s", suggest(md, k))
			continue
		}
		p := join(path, fd.JSONName())
		if _, dup := out[fd.JSONName()]; dup {
			n.fail(p, "given twice (as %q and %q); keep one", fd.JSONName(), string(fd.Name()))
			continue
		}
		v := obj[k]
		if v == nil {
			continue // null means "not set", as in protojson
		}
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			if prev, ok := oneofs[od.FullName()]; ok {
				n.fail(p, "cannot be set together with %s; a %s takes only one of them", join(path, prev), md.Name())
				continue
			}
			oneofs[od.FullName()] = fd.JSONName()
		}
		out[fd.JSONName()] = n.field(v, fd, p)
	}
	return out
}

func anyKnown(obj map[string]any, md protoreflect.MessageDescriptor) bool {
	for k := range obj {
		if md.Fields().ByJSONName(k) != nil || md.Fields().ByName(protoreflect.Name(k)) != nil {
			return true
		}
	}
	return false
}

// suggest names the closest field, for typos.
func suggest(md protoreflect.MessageDescriptor, k string) string {
	fields := md.Fields()
	names := make([]string, 0, fields.Len())
	best, bestD := "", 4
	lk := strings.ToLower(strings.ReplaceAll(k, "_", ""))
	for i := 0; i < fields.Len(); i++ {
		name := fields.Get(i).JSONName()
		names = append(names, name)
		if d := distance(lk, strings.ToLower(name)); d < bestD {
			best, bestD = name, d
		}
	}
	if best != "" {
		return fmt.Sprintf("did you mean %q?", best)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return fmt.Sprintf("%s has no fields", md.Name())
	}
	return fmt.Sprintf("%s has %s", md.Name(), strings.Join(names, ", "))
}

func distance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (n *normalizer) field(v any, fd protoreflect.FieldDescriptor, path string) any {
	switch {
	case fd.IsMap():
		obj, ok := v.(map[string]any)
		if !ok {
			n.fail(path, "must be an object of key/value pairs, not %s", kind(v))
			return nil
		}
		out := make(map[string]any, len(obj))
		for k, e := range obj {
			ep := fmt.Sprintf("%s[%q]", path, k)
			if e == nil {
				n.fail(ep, "value must not be null")
				continue
			}
			out[k] = n.single(e, fd.MapValue(), ep)
		}
		return out
	case fd.IsList():
		list, ok := v.([]any)
		if !ok {
			if !n.lenient {
				n.fail(path, "must be a list ([...]), not %s; wrap the value in [ ]", kind(v))
				return nil
			}
			list = []any{v}
		}
		out := make([]any, 0, len(list))
		for i, e := range list {
			ep := fmt.Sprintf("%s[%d]", path, i)
			if e == nil {
				n.fail(ep, "list elements must not be null")
				continue
			}
			out = append(out, n.single(e, fd, ep))
		}
		return out
	}
	return n.single(v, fd, path)
}

func kind(v any) string {
	switch v := v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return fmt.Sprintf("the string %q", clip(v))
	case json.Number:
		return "the number " + clip(v.String())
	case bool:
		return fmt.Sprintf("%v", v)
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", v)
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// single checks one (non-list) value against the field's kind.
func (n *normalizer) single(v any, fd protoreflect.FieldDescriptor, path string) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		md := fd.Message()
		if wellKnown(md) {
			switch md.FullName() {
			case "google.protobuf.Duration":
				s, ok := v.(string)
				if !ok {
					if num, isNum := v.(json.Number); isNum && n.lenient {
						return num.String() + "s"
					}
					n.fail(path, "must be a duration string such as \"3600s\", not %s", kind(v))
					return nil
				}
				if !strings.HasSuffix(s, "s") {
					n.fail(path, "%q is not a duration; write seconds with an s suffix, e.g. \"3600s\"", clip(s))
					return nil
				}
				if _, err := strconv.ParseFloat(strings.TrimSuffix(s, "s"), 64); err != nil {
					n.fail(path, "%q is not a duration; write seconds with an s suffix, e.g. \"3600s\"", clip(s))
					return nil
				}
			case "google.protobuf.Timestamp":
				if _, ok := v.(string); !ok {
					n.fail(path, "must be an RFC 3339 timestamp string, not %s", kind(v))
					return nil
				}
			}
			return v
		}
		obj, ok := v.(map[string]any)
		if !ok {
			n.fail(path, "must be an object ({...}), not %s", kind(v))
			return nil
		}
		return n.message(obj, md, path)
	case protoreflect.EnumKind:
		ed := fd.Enum()
		switch x := v.(type) {
		case string:
			if ed.Values().ByName(protoreflect.Name(x)) != nil {
				return x
			}
			if n.lenient {
				if ed.Values().ByName(protoreflect.Name(strings.ToUpper(x))) != nil {
					return strings.ToUpper(x)
				}
			}
			n.fail(path, "unknown value %q; use one of %s", clip(x), enumNames(ed))
			return nil
		case json.Number:
			i, err := strconv.ParseInt(x.String(), 10, 32)
			if err != nil {
				n.fail(path, "%s is not an enum number; use one of %s", clip(x.String()), enumNames(ed))
				return nil
			}
			// protojson keeps unknown numbers of open enums; refuse them
			// here, as Batch's front end does.
			if ed.Values().ByNumber(protoreflect.EnumNumber(i)) == nil {
				n.fail(path, "%d is not a value of %s; use one of %s", i, ed.Name(), enumNames(ed))
				return nil
			}
			return x
		}
		n.fail(path, "must be an enum name string, not %s; use one of %s", kind(v), enumNames(ed))
		return nil
	case protoreflect.StringKind, protoreflect.BytesKind:
		switch x := v.(type) {
		case string:
			return x
		case json.Number:
			if n.lenient {
				return x.String()
			}
		case bool:
			if n.lenient {
				return strconv.FormatBool(x)
			}
		}
		n.fail(path, "must be a string, not %s", kind(v))
		return nil
	case protoreflect.BoolKind:
		switch x := v.(type) {
		case bool:
			return x
		case string:
			if n.lenient {
				if b, err := strconv.ParseBool(x); err == nil {
					return b
				}
			}
		}
		n.fail(path, "must be true or false, not %s", kind(v))
		return nil
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		var s string
		switch x := v.(type) {
		case json.Number:
			s = x.String()
		case string:
			s = x
		default:
			n.fail(path, "must be a number, not %s", kind(v))
			return nil
		}
		if _, err := strconv.ParseFloat(s, 64); err != nil && s != "NaN" && s != "Infinity" && s != "-Infinity" {
			n.fail(path, "must be a number, not %s", kind(v))
			return nil
		}
		return v
	default: // integers
		var s string
		switch x := v.(type) {
		case json.Number:
			s = x.String()
		case string:
			s = strings.TrimSpace(x)
		default:
			n.fail(path, "must be an integer, not %s", kind(v))
			return nil
		}
		bits, signed := intKind(fd.Kind())
		var err error
		if signed {
			_, err = strconv.ParseInt(s, 10, bits)
		} else {
			_, err = strconv.ParseUint(s, 10, bits)
		}
		if err != nil {
			// protojson also takes integral floats such as 1e3 or 2.0.
			f, ferr := strconv.ParseFloat(s, 64)
			if ferr != nil || f != math.Trunc(f) {
				n.fail(path, "must be an integer, not %s", kind(v))
				return nil
			}
			if (signed && (f < -math.Pow(2, float64(bits-1)) || f >= math.Pow(2, float64(bits-1)))) || (!signed && (f < 0 || f >= math.Pow(2, float64(bits)))) {
				n.fail(path, "%s is out of range for a %s", clip(s), fd.Kind())
				return nil
			}
			return json.Number(strconv.FormatFloat(f, 'f', -1, 64))
		}
		return json.Number(s)
	}
}

func intKind(k protoreflect.Kind) (bits int, signed bool) {
	switch k {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return 32, true
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return 32, false
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return 64, false
	}
	return 64, true
}

func enumNames(ed protoreflect.EnumDescriptor) string {
	var names []string
	for i := 0; i < ed.Values().Len(); i++ {
		v := ed.Values().Get(i)
		if v.Number() == 0 && strings.HasSuffix(string(v.Name()), "UNSPECIFIED") {
			continue
		}
		names = append(names, string(v.Name()))
	}
	return strings.Join(names, ", ")
}
