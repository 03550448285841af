package runtime

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Options is what ParseOptions understood of a runnable's "docker run"
// options string. Zero values mean "not given".
type Options struct {
	Env        []string            // -e, --env (KEY=VALUE; a bare KEY copies the host's value, as docker does)
	Workdir    string              // -w, --workdir
	User       string              // -u, --user
	Volumes    []string            // -v, --volume
	Tmpfs      []string            // --tmpfs /path[:options]
	ReadOnly   bool                // --read-only
	Network    string              // --network, --net: "host" or "none" ("bridge" and "default" mean host here)
	Privileged bool                // --privileged
	ShmSize    int64               // --shm-size, bytes
	Ulimits    []specs.POSIXRlimit // --ulimit name=soft[:hard]
	CapAdd     []string            // --cap-add
	CapDrop    []string            // --cap-drop
	Hostname   string              // -h, --hostname
	Entrypoint *string             // --entrypoint
	Labels     map[string]string   // -l, --label
	AddHosts   []string            // --add-host name:ip, as "ip name"
	Memory     int64               // -m, --memory, bytes
	CPUMilli   int64               // --cpus, in thousandths of a CPU
	PidsLimit  int64               // --pids-limit
	PIDHost    bool                // --pid=host
	IPCHost    bool                // --ipc=host
	NoNewPriv  bool                // --security-opt no-new-privileges
	StopGrace  time.Duration       // --stop-timeout seconds
	Name       string              // --name, kept as an annotation only
	// Detach is -d, --detach. A runnable runs detached only when it is a
	// background runnable; the runtime ignores the flag, and job validation
	// refuses it on a foreground runnable, where docker run would return at
	// once and leave the container running.
	Detach bool
}

type optHandler struct {
	value bool // takes a value
	apply func(o *Options, v string) error
}

var optHandlers map[string]optHandler

func init() {
	str := func(set func(o *Options, v string)) optHandler {
		return optHandler{value: true, apply: func(o *Options, v string) error { set(o, v); return nil }}
	}
	boolean := func(set func(o *Options, b bool)) optHandler {
		return optHandler{apply: func(o *Options, v string) error {
			b := true
			if v != "" {
				var err error
				if b, err = strconv.ParseBool(v); err != nil {
					return fmt.Errorf("want true or false")
				}
			}
			set(o, b)
			return nil
		}}
	}
	noop := optHandler{apply: func(*Options, string) error { return nil }}
	env := str(func(o *Options, v string) {
		if !strings.Contains(v, "=") {
			// docker copies a bare name from its own environment, or drops it.
			hv, ok := os.LookupEnv(v)
			if !ok {
				return
			}
			v += "=" + hv
		}
		o.Env = append(o.Env, v)
	})
	network := optHandler{value: true, apply: func(o *Options, v string) error {
		switch v {
		case "host", "bridge", "default":
			o.Network = "host"
		case "none":
			o.Network = "none"
		default:
			return fmt.Errorf("network %q does not exist here; use host or none", v)
		}
		return nil
	}}
	optHandlers = map[string]optHandler{
		"env":     env,
		"e":       env,
		"workdir": str(func(o *Options, v string) { o.Workdir = v }),
		"w":       str(func(o *Options, v string) { o.Workdir = v }),
		"user":    str(func(o *Options, v string) { o.User = v }),
		"u":       str(func(o *Options, v string) { o.User = v }),
		"volume":  str(func(o *Options, v string) { o.Volumes = append(o.Volumes, v) }),
		"v":       str(func(o *Options, v string) { o.Volumes = append(o.Volumes, v) }),
		"tmpfs":   str(func(o *Options, v string) { o.Tmpfs = append(o.Tmpfs, v) }),
		"hostname": str(func(o *Options, v string) {
			o.Hostname = v
		}),
		"h":          str(func(o *Options, v string) { o.Hostname = v }),
		"name":       str(func(o *Options, v string) { o.Name = v }),
		"entrypoint": str(func(o *Options, v string) { o.Entrypoint = &v }),
		"read-only":  boolean(func(o *Options, b bool) { o.ReadOnly = b }),
		"privileged": boolean(func(o *Options, b bool) { o.Privileged = b }),
		"network":    network,
		"net":        network,
		"cap-add":    str(func(o *Options, v string) { o.CapAdd = append(o.CapAdd, v) }),
		"cap-drop":   str(func(o *Options, v string) { o.CapDrop = append(o.CapDrop, v) }),
		"label":      {value: true, apply: applyLabel},
		"l":          {value: true, apply: applyLabel},
		"add-host": {value: true, apply: func(o *Options, v string) error {
			name, ip, ok := strings.Cut(v, ":")
			if !ok || name == "" || ip == "" {
				return fmt.Errorf("want host:ip")
			}
			o.AddHosts = append(o.AddHosts, ip+"\t"+name)
			return nil
		}},
		"shm-size": {value: true, apply: func(o *Options, v string) error {
			n, err := parseBytes(v)
			o.ShmSize = n
			return err
		}},
		"memory": {value: true, apply: applyMemory},
		"m":      {value: true, apply: applyMemory},
		"cpus": {value: true, apply: func(o *Options, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || math.IsInf(f, 0) || f > 1e6 {
				return fmt.Errorf("want a positive number of CPUs such as 1.5")
			}
			o.CPUMilli = int64(math.Round(f * 1000))
			return nil
		}},
		"pids-limit": {value: true, apply: func(o *Options, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return fmt.Errorf("want an integer")
			}
			o.PidsLimit = n
			return nil
		}},
		"pid": {value: true, apply: func(o *Options, v string) error {
			if v != "host" {
				return fmt.Errorf("only --pid=host is supported")
			}
			o.PIDHost = true
			return nil
		}},
		"ipc": {value: true, apply: func(o *Options, v string) error {
			switch v {
			case "host":
				o.IPCHost = true
			case "private", "shareable":
			default:
				return fmt.Errorf("only host, private and shareable are supported")
			}
			return nil
		}},
		"ulimit": {value: true, apply: applyUlimit},
		"security-opt": {value: true, apply: func(o *Options, v string) error {
			switch v {
			case "no-new-privileges", "no-new-privileges:true", "no-new-privileges=true":
				o.NoNewPriv = true
			case "no-new-privileges:false", "no-new-privileges=false":
				o.NoNewPriv = false
			case "seccomp=unconfined", "seccomp:unconfined", "apparmor=unconfined", "apparmor:unconfined", "label=disable", "label:disable":
				// Riffle applies no seccomp, AppArmor or SELinux profile.
			default:
				return fmt.Errorf("only no-new-privileges and the unconfined profiles are supported")
			}
			return nil
		}},
		"stop-timeout": {value: true, apply: func(o *Options, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return fmt.Errorf("want whole seconds")
			}
			o.StopGrace = time.Duration(n) * time.Second
			return nil
		}},
		// Harmless here: containers are always removed, stdin is /dev/null
		// as on a Batch VM, and output goes to the task's log rather than a
		// terminal (Batch's own samples pass -t).
		"rm":          noop,
		"i":           noop,
		"interactive": noop,
		"t":           noop,
		"tty":         noop,
		"d":           boolean(func(o *Options, b bool) { o.Detach = b }),
		"detach":      boolean(func(o *Options, b bool) { o.Detach = b }),
	}
}

func applyLabel(o *Options, v string) error {
	k, val, _ := strings.Cut(v, "=")
	if k == "" {
		return fmt.Errorf("want key=value")
	}
	if o.Labels == nil {
		o.Labels = map[string]string{}
	}
	o.Labels[k] = val
	return nil
}

func applyMemory(o *Options, v string) error {
	n, err := parseBytes(v)
	if err != nil {
		return err
	}
	if n < 6<<20 {
		return fmt.Errorf("minimum is 6m")
	}
	o.Memory = n
	return nil
}

var rlimitNames = map[string]string{
	"core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
	"locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE",
	"nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS",
	"rtprio": "RLIMIT_RTPRIO", "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING",
	"stack": "RLIMIT_STACK", "as": "RLIMIT_AS",
}

func applyUlimit(o *Options, v string) error {
	name, limits, ok := strings.Cut(v, "=")
	typ, known := rlimitNames[name]
	if !ok || !known {
		return fmt.Errorf("want name=soft[:hard] with a name such as nofile, nproc, core, memlock, stack")
	}
	parse := func(s string) (uint64, error) {
		if s == "-1" || s == "unlimited" {
			return math.MaxUint64, nil
		}
		return strconv.ParseUint(s, 10, 64)
	}
	softS, hardS, hasHard := strings.Cut(limits, ":")
	soft, err := parse(softS)
	if err != nil {
		return fmt.Errorf("soft limit %q is not a number", softS)
	}
	hard := soft
	if hasHard {
		if hard, err = parse(hardS); err != nil {
			return fmt.Errorf("hard limit %q is not a number", hardS)
		}
	}
	if soft > hard {
		return fmt.Errorf("soft limit exceeds hard limit")
	}
	for i := range o.Ulimits {
		if o.Ulimits[i].Type == typ {
			o.Ulimits[i].Soft, o.Ulimits[i].Hard = soft, hard
			return nil
		}
	}
	o.Ulimits = append(o.Ulimits, specs.POSIXRlimit{Type: typ, Soft: soft, Hard: hard})
	return nil
}

// parseBytes reads docker's sizes: a number with an optional b, k, m or g
// suffix (powers of 1024).
func parseBytes(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "b")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		case 't':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || f <= 0 || f*float64(mult) > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q: want a positive size such as 512m or 2g", s)
	}
	return int64(f * float64(mult)), nil
}

// ParseOptions parses a runnable's "docker run" options string. It honours
// the flags listed on Options and refuses every other flag, and any argument
// that is not a flag, with an error that names it; the image and command come
// from the runnable's own fields, never from options.
func ParseOptions(s string) (*Options, error) {
	o := &Options{}
	words, err := splitShell(s)
	if err != nil {
		return nil, fmt.Errorf("%w: options: %v", ErrInvalidSpec, err)
	}
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == "--" || !strings.HasPrefix(w, "-") || w == "-" {
			return nil, fmt.Errorf("%w: options: unexpected argument %q: only docker run flags belong in options (the image and command come from imageUri, entrypoint and commands)", ErrInvalidSpec, w)
		}
		var name, val string
		hasVal := false
		if strings.HasPrefix(w, "--") {
			name, val, hasVal = strings.Cut(w[2:], "=")
		} else {
			// Shorthand: -e V, -e=V or -eV.
			name = w[1:2]
			if rest := w[2:]; rest != "" {
				val, hasVal = strings.TrimPrefix(rest, "="), true
			}
		}
		flag := "-" + name
		if strings.HasPrefix(w, "--") {
			flag = "--" + name
		}
		h, ok := optHandlers[name]
		if !ok {
			return nil, fmt.Errorf("%w: options: flag %s is not supported by Riffle's runtime", ErrInvalidSpec, flag)
		}
		if h.value && !hasVal {
			if i+1 >= len(words) {
				return nil, fmt.Errorf("%w: options: flag %s needs a value", ErrInvalidSpec, flag)
			}
			i++
			val = words[i]
		}
		if !h.value && hasVal && !strings.HasPrefix(w, "--") && !strings.HasPrefix(w[2:], "=") {
			// Combined short booleans, as in -it or -td: apply each.
			if err := applyCombined(o, w); err != nil {
				return nil, err
			}
			continue
		}
		if err := h.apply(o, val); err != nil {
			return nil, fmt.Errorf("%w: options: %s %s: %v", ErrInvalidSpec, flag, val, err)
		}
	}
	return o, nil
}

// applyCombined applies a word of combined short boolean flags such as -it.
func applyCombined(o *Options, w string) error {
	for _, c := range w[1:] {
		h, ok := optHandlers[string(c)]
		if !ok || h.value {
			return fmt.Errorf("%w: options: %s: -%c is not a boolean flag Riffle's runtime supports; write each flag separately", ErrInvalidSpec, w, c)
		}
		if err := h.apply(o, ""); err != nil {
			return fmt.Errorf("%w: options: %s: -%c: %v", ErrInvalidSpec, w, c, err)
		}
	}
	return nil
}

// splitShell splits s into words the way a POSIX shell would for a plain
// command line: whitespace separates, single quotes are literal, double
// quotes allow backslash escapes, and a backslash outside quotes escapes the
// next character. Batch hands options to a shell, so users quote that way.
func splitShell(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			inWord = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case c == '"':
			inWord = true
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`\n", s[i+1]) >= 0 {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated double quote")
			}
		case c == '\\':
			inWord = true
			if i+1 < len(s) {
				i++
				cur.WriteByte(s[i])
			}
		default:
			inWord = true
			cur.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}
