package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/riffle-dev/riffle/internal/node"
)

// DefaultListen is where `riffle serve` listens unless told otherwise. When
// the port is taken and no address was configured, a free port is used.
const DefaultListen = "127.0.0.1:8080"

// Config is `riffle serve`'s configuration file. Every key is optional.
type Config struct {
	// DataDir holds all of Riffle's state: registry storage, caches, job
	// state and logs. Default: $XDG_STATE_HOME/riffle, or
	// ~/.local/state/riffle.
	DataDir string `json:"dataDir,omitempty"`

	// Listen is the host:port of the HTTP API (registry, Batch API, health
	// and metrics). Default: 127.0.0.1:8080, or a free port if that is taken.
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

	// Stream configures image streaming on this node.
	Stream StreamConfig `json:"stream,omitempty"`

	// Index configures where this node finds layer indexes besides the
	// server's own index service.
	Index IndexConfig `json:"index,omitempty"`

	// InsecureRegistries lists registry hosts (host or host:port) that are
	// reached over plain HTTP. Loopback registries always are.
	InsecureRegistries []string `json:"insecureRegistries,omitempty"`

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
}

// IndexConfig configures the node's index sources. The node cache is
// always asked first and the server's own index service (which builds
// missing indexes) last.
type IndexConfig struct {
	// Service is the URL of another riffle serve whose index service this
	// node asks first (and reports startup profiles to), e.g.
	// http://10.0.0.2:8080. Default: none.
	Service string `json:"service,omitempty"`
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
	if err := json.Unmarshal(j, &c); err != nil {
		return c, fmt.Errorf("config %s: %s (see docs/config.md for the keys)", path, strings.TrimPrefix(err.Error(), "json: "))
	}
	return c, nil
}

// checkKeys reports the first key of m that is not a json tag of struct t.
func checkKeys(m map[string]any, t reflect.Type, prefix string) error {
	fields := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		fields[tag] = f.Type
	}
	for k, v := range m {
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
	return c
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
	if c.Stream.MaxBackgroundBytes < 0 {
		return fmt.Errorf("config: stream.maxBackgroundBytes %d: must be positive (0: no limit)", c.Stream.MaxBackgroundBytes)
	}
	if u := c.Index.Service; u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		return fmt.Errorf("config: index.service %q: give a URL, like http://HOST:PORT", u)
	}
	if c.Cache.MaxBytes < 0 {
		return fmt.Errorf("config: cache.maxBytes %d: must be positive", c.Cache.MaxBytes)
	}
	if c.Registry.MaxBlobBytes < 0 {
		return fmt.Errorf("config: registry.maxBlobBytes %d: must be positive", c.Registry.MaxBlobBytes)
	}
	if c.Capacity.CPUMilli < 0 || c.Capacity.MemoryMib < 0 || c.Capacity.Overcommit < 0 {
		return fmt.Errorf("config: capacity (cpuMilli %d, memoryMib %d, overcommit %g): must not be negative; leave a key out for the machine's own", c.Capacity.CPUMilli, c.Capacity.MemoryMib, c.Capacity.Overcommit)
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
