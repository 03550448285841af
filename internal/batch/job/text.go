package job

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// checkText reports every string of m (map keys included) that holds a NUL
// byte or is not valid UTF-8, by field path. Both would pass the API and
// fail at run time, or worse, not fail: a NUL cannot pass through exec's
// arguments or environment and silently truncates a script written to a
// file. One walk over the message covers every field, present and future.
func checkText(m protoreflect.Message, path string, bad func(string, string, ...any)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := fd.JSONName()
		if path != "" {
			p = path + "." + p
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				checkValue(fd, l.Get(i), fmt.Sprintf("%s[%d]", p, i), bad)
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				kp := fmt.Sprintf("%s[%q]", p, clip(strings.ToValidUTF8(k.String(), "\uFFFD")))
				if fd.MapKey().Kind() == protoreflect.StringKind {
					if msg := textProblem(k.String()); msg != "" {
						bad(kp, "the key %s", msg)
					}
				}
				checkValue(fd.MapValue(), mv, kp, bad)
				return true
			})
		default:
			checkValue(fd, v, p, bad)
		}
		return true
	})
}

func checkValue(fd protoreflect.FieldDescriptor, v protoreflect.Value, p string, bad func(string, string, ...any)) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		if msg := textProblem(v.String()); msg != "" {
			bad(p, "%s", msg)
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		checkText(v.Message(), p, bad)
	}
}

// textProblem says what is wrong with s as text, or "".
func textProblem(s string) string {
	switch {
	case strings.IndexByte(s, 0) >= 0:
		return "contains a NUL byte (\\u0000), which no command, environment variable or script can hold; remove it"
	case !utf8.ValidString(s):
		return "is not valid UTF-8; use UTF-8 text"
	}
	return ""
}
