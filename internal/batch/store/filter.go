package store

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// The filter language is the subset of AIP-160 that Batch documents for
// list filters:
//
//	filter     = expr
//	expr       = sequence { "AND" sequence }
//	sequence   = factor { factor }            (juxtaposition means AND)
//	factor     = term { "OR" term }           (OR binds tighter than AND)
//	term       = [ "NOT" | "-" ] simple
//	simple     = restriction | "(" expr ")"
//	restriction = field op value
//	op         = "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
//
// Values are double- or single-quoted strings or bare words. ":" means
// "contains" for strings. Times compare as RFC 3339 timestamps. Fields
// are listed by the caller (jobFields, taskFields); anything else is
// refused with ErrInvalidArgument naming the field and the ones allowed.

type fieldKind int

const (
	kindString fieldKind = iota
	kindTime
	kindEnum // compared by name; numbers are accepted and mapped by the getter
)

// fieldDef describes one filterable field of a resource.
type fieldDef[T any] struct {
	kind fieldKind
	get  func(T) string // for kindTime, an RFC 3339 string
	// norm maps a user-given value to the stored form (enum numbers to
	// names); nil means identity.
	norm func(string) (string, error)
}

type fieldSet[T any] struct {
	fields map[string]fieldDef[T]
	// prefix fields are maps such as labels.KEY.
	prefix map[string]func(T, string) (string, bool)
}

func (fs fieldSet[T]) names() string {
	var out []string
	for k := range fs.fields {
		out = append(out, k)
	}
	for k := range fs.prefix {
		out = append(out, k+".KEY")
	}
	sortStrings(out)
	return strings.Join(out, ", ")
}

type predicate[T any] func(T) bool

type token struct {
	kind string // "word", "str", "op", "(", ")", "eof"
	val  string
	pos  int
}

func lex(s string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(s) {
		c := rune(s[i])
		switch {
		case unicode.IsSpace(c):
			i++
		case c == '(' || c == ')':
			toks = append(toks, token{kind: string(c), pos: i})
			i++
		case c == '"' || c == '\'':
			q := s[i]
			j := i + 1
			var b strings.Builder
			for ; j < len(s) && s[j] != q; j++ {
				if s[j] == '\\' && j+1 < len(s) {
					j++
				}
				b.WriteByte(s[j])
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unterminated string starting at column %d", i+1)
			}
			toks = append(toks, token{kind: "str", val: b.String(), pos: i})
			i = j + 1
		case strings.ContainsRune("=!<>:", c):
			op := string(c)
			if i+1 < len(s) && s[i+1] == '=' && c != '=' && c != ':' {
				op += "="
			}
			if op == "!" {
				return nil, fmt.Errorf("unexpected '!' at column %d; use != or NOT", i+1)
			}
			toks = append(toks, token{kind: "op", val: op, pos: i})
			i += len(op)
		default:
			j := i
			for j < len(s) && !unicode.IsSpace(rune(s[j])) && !strings.ContainsRune("()=!<>:\"'", rune(s[j])) {
				j++
			}
			toks = append(toks, token{kind: "word", val: s[i:j], pos: i})
			i = j
		}
	}
	return append(toks, token{kind: "eof", pos: len(s)}), nil
}

type parser[T any] struct {
	toks []token
	i    int
	fs   fieldSet[T]
}

func (p *parser[T]) peek() token { return p.toks[p.i] }
func (p *parser[T]) next() token { t := p.toks[p.i]; p.i++; return t }

func describe(t token) string {
	switch t.kind {
	case "word", "op":
		return strconv.Quote(t.val)
	case "str":
		return "string " + strconv.Quote(t.val)
	}
	return strconv.Quote(t.kind)
}

func isKeyword(t token, kw string) bool { return t.kind == "word" && t.val == kw }

// parseFilter compiles filter into a predicate; an empty filter matches all.
func parseFilter[T any](filter string, fs fieldSet[T]) (predicate[T], error) {
	if strings.TrimSpace(filter) == "" {
		return func(T) bool { return true }, nil
	}
	if len(filter) > 4096 {
		return nil, fmt.Errorf("%w: filter is longer than 4096 characters", ErrInvalidArgument)
	}
	toks, err := lex(filter)
	if err != nil {
		return nil, fmt.Errorf("%w: filter: %v", ErrInvalidArgument, err)
	}
	p := &parser[T]{toks: toks, fs: fs}
	pred, err := p.expr(0)
	if err == nil && p.peek().kind != "eof" {
		err = fmt.Errorf("unexpected %s at column %d", describe(p.peek()), p.peek().pos+1)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: filter: %v (supported: field op value with AND, OR, NOT and parentheses; fields %s)", ErrInvalidArgument, err, fs.names())
	}
	return pred, nil
}

func (p *parser[T]) expr(depth int) (predicate[T], error) {
	if depth > 50 {
		return nil, fmt.Errorf("nested too deeply")
	}
	var preds []predicate[T]
	for {
		f, err := p.factor(depth)
		if err != nil {
			return nil, err
		}
		preds = append(preds, f)
		t := p.peek()
		if isKeyword(t, "AND") {
			p.next()
			continue
		}
		if t.kind == "eof" || t.kind == ")" || isKeyword(t, "OR") {
			break
		}
		// Juxtaposition is AND.
	}
	return func(x T) bool {
		for _, f := range preds {
			if !f(x) {
				return false
			}
		}
		return true
	}, nil
}

func (p *parser[T]) factor(depth int) (predicate[T], error) {
	var preds []predicate[T]
	for {
		t, err := p.term(depth)
		if err != nil {
			return nil, err
		}
		preds = append(preds, t)
		if !isKeyword(p.peek(), "OR") {
			break
		}
		p.next()
	}
	return func(x T) bool {
		for _, f := range preds {
			if f(x) {
				return true
			}
		}
		return false
	}, nil
}

func (p *parser[T]) term(depth int) (predicate[T], error) {
	neg := false
	if t := p.peek(); isKeyword(t, "NOT") || (t.kind == "word" && t.val == "-") {
		p.next()
		neg = true
	} else if t.kind == "word" && strings.HasPrefix(t.val, "-") && len(t.val) > 1 {
		p.toks[p.i].val = t.val[1:]
		neg = true
	}
	var pred predicate[T]
	var err error
	if p.peek().kind == "(" {
		p.next()
		pred, err = p.expr(depth + 1)
		if err != nil {
			return nil, err
		}
		if t := p.next(); t.kind != ")" {
			return nil, fmt.Errorf("missing ) at column %d", t.pos+1)
		}
	} else {
		pred, err = p.restriction()
		if err != nil {
			return nil, err
		}
	}
	if neg {
		inner := pred
		pred = func(x T) bool { return !inner(x) }
	}
	return pred, nil
}

func (p *parser[T]) restriction() (predicate[T], error) {
	ft := p.next()
	if ft.kind != "word" || ft.val == "AND" || ft.val == "OR" || ft.val == "NOT" {
		return nil, fmt.Errorf("expected a field name at column %d", ft.pos+1)
	}
	opt := p.next()
	if opt.kind != "op" {
		return nil, fmt.Errorf("expected an operator (=, !=, <, <=, >, >=, :) after %q at column %d", ft.val, opt.pos+1)
	}
	vt := p.next()
	if vt.kind != "word" && vt.kind != "str" {
		return nil, fmt.Errorf("expected a value after %s%s at column %d", ft.val, opt.val, vt.pos+1)
	}
	field, op, val := ft.val, opt.val, vt.val
	var get func(T) string
	kind := kindString
	if def, ok := p.fs.fields[field]; ok {
		get, kind = def.get, def.kind
		if def.norm != nil {
			v, err := def.norm(val)
			if err != nil {
				return nil, fmt.Errorf("%s: %v", field, err)
			}
			val = v
		}
	} else if dot := strings.IndexByte(field, '.'); dot > 0 && p.fs.prefix[field[:dot]] != nil {
		pf, key := p.fs.prefix[field[:dot]], field[dot+1:]
		if op == ":" && val == "*" {
			return func(x T) bool { _, ok := pf(x, key); return ok }, nil
		}
		get = func(x T) string { v, _ := pf(x, key); return v }
	} else {
		return nil, fmt.Errorf("field %q is not supported", field)
	}
	if kind == kindTime {
		want, err := time.Parse(time.RFC3339Nano, val)
		if err != nil {
			return nil, fmt.Errorf("%s: %q is not an RFC 3339 time such as 2026-01-02T15:04:05Z", field, val)
		}
		return func(x T) bool {
			got, err := time.Parse(time.RFC3339Nano, get(x))
			if err != nil {
				return false
			}
			return compare(got.Compare(want), op)
		}, nil
	}
	if op == ":" {
		if val == "*" {
			return func(x T) bool { return get(x) != "" }, nil
		}
		return func(x T) bool { return strings.Contains(get(x), val) }, nil
	}
	if kind == kindEnum && op != "=" && op != "!=" {
		return nil, fmt.Errorf("%s: only = and != apply to states", field)
	}
	// A trailing * is a prefix match, as in name="projects/p/locations/l/jobs/nightly-*".
	if (op == "=" || op == "!=") && strings.HasSuffix(val, "*") {
		prefix := strings.TrimSuffix(val, "*")
		return func(x T) bool { return strings.HasPrefix(get(x), prefix) == (op == "=") }, nil
	}
	return func(x T) bool { return compare(strings.Compare(get(x), val), op) }, nil
}

func compare(c int, op string) bool {
	switch op {
	case "=":
		return c == 0
	case "!=":
		return c != 0
	case "<":
		return c < 0
	case "<=":
		return c <= 0
	case ">":
		return c > 0
	case ">=":
		return c >= 0
	}
	return false
}

// enumNorm accepts an enum value by name or number.
func enumNorm(byName map[string]int32, byNum map[int32]string) func(string) (string, error) {
	return func(v string) (string, error) {
		if _, ok := byName[v]; ok {
			return v, nil
		}
		if n, err := strconv.ParseInt(v, 10, 32); err == nil {
			if name, ok := byNum[int32(n)]; ok {
				return name, nil
			}
		}
		var names []string
		for k, n := range byName {
			if n != 0 {
				names = append(names, k)
			}
		}
		sortStrings(names)
		return "", fmt.Errorf("unknown state %q; use one of %s", v, strings.Join(names, ", "))
	}
}
