package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/riffle-dev/riffle/internal/node"
	"github.com/riffle-dev/riffle/internal/streamfs"
)

// DefaultListen is where `riffle serve` listens unless told otherwise. When
// the port is taken, serve fails rather than pick another port, since
// clients (RIFFLE_SERVER, image names) are told this address.
const DefaultListen = "127.0.0.1:8080"

// Config is `riffle serve`'s configuration file. Every key is optional.
type Config struct {
	// DataDir holds all of Riffle's state: registry storage, caches, job
	// state and logs. Default: $XDG_STATE_HOME/riffle, or
	// ~/.local/state/riffle.
	DataDir string `json:"dataDir,omitempty"`

	// Listen is the host:port of the HTTP API (registry, Batch API, health
	// and metrics). Default: 127.0.0.1:8080; serve fails when it is taken.
	// Port 0 picks a free port (written to DATA_DIR/serve.addr).
	Listen string `json:"listen,omitempty"`

	// Location is the Batch location this server presents itself as, as in
	// projects/P/locations/LOCATION. Default: us-central1.
	Location string `json:"location,omitempty"`

	// Log configures logging.
	Log LogConfig `json:"log,omitempty"`

	// Registry configures the embedded OCI registry.
	Registry RegistryConfig `json:"registry,omitempty"`

	// Cache configures the node cache of image data.
	Cache CacheConfig `json:"cache,omitempty"`

	// Layers configures the layer store of extracted image layers.
	Layers LayersConfig `json:"layers,omitempty"`

	// Stream configures image streaming on this node.
	Stream StreamConfig `json:"stream,omitempty"`

	// Index configures where this node finds layer indexes besides the
	// server's own index service.
	Index IndexConfig `json:"index,omitempty"`

	// InsecureRegistries lists registry hosts (host or host:port) that are
	// reached over plain HTTP. Loopback registries always are.
	InsecureRegistries []string `json:"insecureRegistries,omitempty"`

	// TLS, Auth, HostPaths, Scripts and Outbound are the security keys;
	// see config_security.go and docs/security.md.
	TLS       TLSConfig      `json:"tls,omitempty"`
	Auth      AuthConfig     `json:"auth,omitempty"`
	HostPaths []string       `json:"hostPaths,omitempty"`
	Scripts   ScriptsConfig  `json:"scripts,omitempty"`
	Outbound  OutboundConfig `json:"outbound,omitempty"`

	// InsecureListenWithoutTLS lets the server listen on a non-loopback
	// address without TLS, so tokens cross the network in clear text.
	InsecureListenWithoutTLS bool `json:"insecureListenWithoutTLS,omitempty"`

	// Capacity is what this node offers tasks.
	Capacity CapacityConfig `json:"capacity,omitempty"`
}

// CapacityConfig is what this node offers tasks: tasks run at once while
// the sum of their taskSpec.computeResource fits (scheduler.Capacity).
// Zero means the default.
type CapacityConfig struct {
	// CPUMilli is the node's CPU in milliCPU. Default: the CPUs × 1000.
	CPUMilli int64 `json:"cpuMilli,omitempty"`
	// MemoryMib is the node's memory in MiB. Default: the machine's memory.
	MemoryMib int64 `json:"memoryMib,omitempty"`
	// Overcommit multiplies both. Default: 1.
	Overcommit float64 `json:"overcommit,omitempty"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is one of debug, info, warn, error. Default: info.
	Level string `json:"level,omitempty"`
	// Format is text or json. Default: text.
	Format string `json:"format,omitempty"`
}

// RegistryConfig configures the embedded registry.
type RegistryConfig struct {
	// MaxBlobBytes caps a single blob upload, in bytes. Default: 32 GiB.
	MaxBlobBytes int64 `json:"maxBlobBytes,omitempty"`
}

// CacheConfig configures the node cache.
type CacheConfig struct {
	// MaxBytes bounds the node cache of streamed image data, in bytes; the
	// least recently used entries are evicted past it. Default: 20 GiB.
	MaxBytes int64 `json:"maxBytes,omitempty"`
}

// LayersConfig configures the layer store: layers extracted by pulls and
// by streamed images settling, and images pulled flat.
type LayersConfig struct {
	// MaxBytes caps the layer store and flat images together, in bytes:
	// past it, layers and images no task or mount uses are removed, least
	// recently used first (checked every minute). Default: 50 GiB.
	MaxBytes int64 `json:"maxBytes,omitempty"`
}

// StreamConfig configures how streamed images arrive.
type StreamConfig struct {
	// NoBackground turns off the background stream of whole layers into
	// the layer store: images then arrive only as they are read, and never
	// settle. Default: false (layers stream in the background).
	NoBackground bool `json:"noBackground,omitempty"`
	// MaxBackgroundBytes turns the background stream off for images larger
	// than this, uncompressed, in bytes. Default: 0, no limit.
	MaxBackgroundBytes int64 `json:"maxBackgroundBytes,omitempty"`
	// NoProfiles turns off startup profiles: mounts neither prefetch nor
	// report them. Default: false.
	NoProfiles bool `json:"noProfiles,omitempty"`
	// ProfileSeconds and ProfileBytes bound what a streamed image's first
	// task records as its startup profile: spans first read later than
	// this many seconds after the mount, or past this many bytes of span
	// data (uncompressed), are left out. Defaults: 30 s and 512 MiB.
	ProfileSeconds int   `json:"profileSeconds,omitempty"`
	ProfileBytes   int64 `json:"profileBytes,omitempty"`
	// UnreachableAfterSeconds: once a registry has answered no request
	// for this long, reads of image data not yet on the node fail at once
	// (the task fails, and its events say the registry is unreachable)
	// until the registry answers again. Default: 30. -1: never.
	UnreachableAfterSeconds int `json:"unreachableAfterSeconds,omitempty"`
}

// unreachableAfter is UnreachableAfterSeconds for remote.Options (0: its
// default, negative: never).
func (c StreamConfig) unreachableAfter() time.Duration {
	return time.Duration(c.UnreachableAfterSeconds) * time.Second
}

// IndexConfig configures the node's index sources. The node cache is
// always asked first and the server's own index service (which builds
// missing indexes) last.
type IndexConfig struct {
	// Service is the URL of another riffle serve whose index service this
	// node asks first (and reports startup profiles to), e.g.
	// http://10.0.0.2:8080. Default: none.
	Service string `json:"service,omitempty"`
	// TokenFile holds the token this node sends to Service (required with
	// it: every riffle serve checks who calls). The node reads windows and
	// prefetch packs of every project's images and reports their startup
	// profiles, so the token needs editor in every project ("*").
	TokenFile string `json:"tokenFile,omitempty"`
	// CAFile holds the PEM certificate (or CA) to trust for an https
	// Service, such as the serve.crt in that server's data directory.
	// Default: the system's roots.
	CAFile string `json:"caFile,omitempty"`
	// Referrers makes the node look for index artifacts stored beside an
	// image in its registry before building indexes. Default: false.
	Referrers bool `json:"referrers,omitempty"`
}

// LoadConfig reads a YAML (or JSON) config file. Unknown keys are errors,
// so a typo never silently falls back to a default.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if string(bytes.TrimSpace(j)) == "null" { // an empty file: all defaults
		return c, nil
	}
	// encoding/json matches keys case-insensitively; a config file must use
	// the documented spelling, so check the keys first.
	var raw map[string]any
	if err := json.Unmarshal(j, &raw); err != nil {
		return c, fmt.Errorf("config %s: the file must be a mapping of keys: %w", path, err)
	}
	if err := checkKeys(raw, reflect.TypeOf(c), ""); err != nil {
		return c, fmt.Errorf("config %s: %w (see docs/config.md for the keys)", path, err)
	}
	if err := parseSizes(raw); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if j, err = json.Marshal(raw); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if err := json.Unmarshal(j, &c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return c, fmt.Errorf("config %s: %s: want %s, not a %s (see docs/config.md)", path, te.Field, kindName(te.Type), te.Value)
		}
		return c, fmt.Errorf("config %s: %s (see docs/config.md for the keys)", path, strings.TrimPrefix(err.Error(), "json: "))
	}
	return c, nil
}

// sizeKeys are the keys that hold a number of bytes, which may also be
// written as a size such as "10GiB".
var sizeKeys = []string{"registry.maxBlobBytes", "cache.maxBytes", "layers.maxBytes", "stream.maxBackgroundBytes", "stream.profileBytes"}

// parseSizes replaces sizes written as strings in raw with their number of
// bytes.
func parseSizes(raw map[string]any) error {
	for _, key := range sizeKeys {
		section, field, _ := strings.Cut(key, ".")
		m, _ := raw[section].(map[string]any)
		str, isString := m[field].(string)
		if !isString {
			continue
		}
		n, err := ParseSize(str)
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		m[field] = n
	}
	return nil
}

// ParseSize reads a size: a number of bytes, or a number with a unit, B,
// KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024),
// as in "512MiB" or "10 GiB". The single letters k, m, g, t mean powers of
// 1024, as in docker's flags.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return !(r >= '0' && r <= '9' || r == '.') })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	mult, ok := sizeUnits[strings.ToLower(unit)]
	f, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil || f < 0 || f*float64(mult) > math.MaxInt64 {
		return 0, fmt.Errorf("size %q: use a number of bytes or a size such as 512MiB, 10GiB or 1TB", s)
	}
	return int64(f * float64(mult)), nil
}

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
	"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
}

// kindName says what a config value of type t must look like.
func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "a whole number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Struct, reflect.Map:
		return "a mapping of keys"
	}
	return t.String()
}

// checkKeys reports the first key of m that is not a json tag of struct t.
func checkKeys(m map[string]any, t reflect.Type, prefix string) error {
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		fields[tag] = f.Type
	}
	// In key order, so that of several unknown keys the same one is named
	// on every run.
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := m[k]
		ft, ok := fields[k]
		if !ok {
			return fmt.Errorf("unknown key %q", prefix+k)
		}
		if sub, isMap := v.(map[string]any); isMap && ft.Kind() == reflect.Struct {
			if err := checkKeys(sub, ft, prefix+k+"."); err != nil {
				return err
			}
		}
	}
	return nil
}

// WithDefaults returns c with every unset key at its default.
func (c Config) WithDefaults() Config {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir()
	}
	if c.Location == "" {
		c.Location = "us-central1"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Cache.MaxBytes == 0 {
		c.Cache.MaxBytes = node.DefaultCacheBytes
	}
	if c.Layers.MaxBytes == 0 {
		c.Layers.MaxBytes = node.DefaultLayerBytes
	}
	return c.securityDefaults()
}

// Validate reports the first bad key, naming it and the fix.
func (c Config) Validate() error {
	switch c.Log.Level {
	case "", "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log.level %q: use one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "", "text", "json":
	default:
		return fmt.Errorf("config: log.format %q: use text or json", c.Log.Format)
	}
	if c.Stream.UnreachableAfterSeconds < -1 {
		return fmt.Errorf("config: stream.unreachableAfterSeconds %d: give seconds, or -1 for never", c.Stream.UnreachableAfterSeconds)
	}
	if c.Stream.ProfileSeconds < 0 {
		return fmt.Errorf("config: stream.profileSeconds %d: give seconds (0: the default, %v)", c.Stream.ProfileSeconds, streamfs.DefaultProfileTime)
	}
	if c.Stream.ProfileBytes < 0 {
		return fmt.Errorf("config: stream.profileBytes %d: give bytes (0: the default, %d)", c.Stream.ProfileBytes, streamfs.DefaultProfileBytes)
	}
	if c.Stream.MaxBackgroundBytes < 0 {
		return fmt.Errorf("config: stream.maxBackgroundBytes %d: must be positive (0: no limit)", c.Stream.MaxBackgroundBytes)
	}
	if u := c.Index.Service; u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return fmt.Errorf("config: index.service %q: give a URL, like http://HOST:PORT", u)
	}
	if c.Index.Service != "" && c.Index.TokenFile == "" {
		return fmt.Errorf("config: index.service %s needs index.tokenFile: a file with a token of that server (editor in every project, made with riffle auth tokens create there)", c.Index.Service)
	}
	if c.Index.Service == "" && (c.Index.TokenFile != "" || c.Index.CAFile != "") {
		return fmt.Errorf("config: index.tokenFile and index.caFile are for index.service, which is not set")
	}
	if c.Cache.MaxBytes < 0 {
		return fmt.Errorf("config: cache.maxBytes %d: must be positive", c.Cache.MaxBytes)
	}
	if c.Layers.MaxBytes < 0 {
		return fmt.Errorf("config: layers.maxBytes %d: must be positive", c.Layers.MaxBytes)
	}
	if c.Registry.MaxBlobBytes < 0 {
		return fmt.Errorf("config: registry.maxBlobBytes %d: must be positive", c.Registry.MaxBlobBytes)
	}
	if c.Capacity.CPUMilli < 0 || c.Capacity.MemoryMib < 0 || c.Capacity.Overcommit < 0 {
		return fmt.Errorf("config: capacity (cpuMilli %d, memoryMib %d, overcommit %g): must not be negative; leave a key out for the machine's own", c.Capacity.CPUMilli, c.Capacity.MemoryMib, c.Capacity.Overcommit)
	}
	if err := c.validateSecurity(); err != nil {
		return err
	}
	if c.Location != "" && !validLocation(c.Location) {
		return fmt.Errorf("config: location %q: use lowercase letters, digits and dashes, like us-central1", c.Location)
	}
	return nil
}

func validLocation(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return s != ""
}

// DefaultDataDir is the user's state directory for Riffle
// (node.DefaultRoot).
func DefaultDataDir() string { return node.DefaultRoot() }

// Layout is the data directory's layout, shared with the node engine and
// the CLI.
func (c Config) Layout() node.Layout { return node.Layout{Root: c.DataDir} }
