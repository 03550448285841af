package remote

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// ErrBadReference is wrapped by every reference parsing error.
var ErrBadReference = errors.New("remote: invalid image reference")

var (
	pathComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagRE           = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestRE        = regexp.MustCompile(`^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$`)
	hostLabelRE     = regexp.MustCompile(`^(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])$`)
)

const refShape = "HOST[:PORT]/PATH[:TAG][@DIGEST], e.g. 127.0.0.1:8080/my-project/my-repo/image:v1"

// badRef builds a reference error that names the reference and the rule.
func badRef(ref, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrBadReference, ref, fmt.Sprintf(format, args...))
}

// ParseReference parses an image reference (a tag or a digest reference),
// naming the rule a bad one breaks. A reference to a host that may use plain
// HTTP (see [Client.AllowsHTTP]) is marked insecure, so go-containerregistry
// falls back to http for it.
func (c *Client) ParseReference(s string) (name.Reference, error) {
	if err := checkReference(s, true); err != nil {
		return nil, err
	}
	ref, err := name.ParseReference(s)
	if err != nil {
		return nil, badRef(s, "%v (expected %s)", err, refShape)
	}
	if c.AllowsHTTP(ref.Context().RegistryStr()) {
		ref, err = name.ParseReference(s, name.Insecure)
		if err != nil {
			return nil, badRef(s, "%v", err)
		}
	}
	return ref, nil
}

// ParseRepository parses a repository name (HOST/PATH, no tag or digest).
func (c *Client) ParseRepository(s string) (name.Repository, error) {
	if err := checkReference(s, false); err != nil {
		return name.Repository{}, err
	}
	var opts []name.Option
	if host, _, _ := strings.Cut(s, "/"); c.AllowsHTTP(host) {
		opts = append(opts, name.Insecure)
	}
	repo, err := name.NewRepository(s, opts...)
	if err != nil {
		return name.Repository{}, badRef(s, "%v (expected HOST[:PORT]/PATH)", err)
	}
	return repo, nil
}

// ParseRegistry parses a registry host ("host" or "host:port").
func (c *Client) ParseRegistry(s string) (name.Registry, error) {
	if err := checkHost(s, s); err != nil {
		return name.Registry{}, err
	}
	var opts []name.Option
	if c.AllowsHTTP(s) {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(s, opts...)
	if err != nil {
		return name.Registry{}, badRef(s, "%v", err)
	}
	return reg, nil
}

// checkReference applies the distribution spec's grammar piece by piece so
// that the error says which part is wrong and what it must look like.
func checkReference(s string, allowTagDigest bool) error {
	if s == "" {
		return fmt.Errorf("%w: the reference is empty; give %s", ErrBadReference, refShape)
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return badRef(s, "contains whitespace or a control character; a reference is %s", refShape)
		}
	}
	rest := s
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		if !allowTagDigest {
			return badRef(s, "a repository name has no @DIGEST; give HOST[:PORT]/PATH")
		}
		d := rest[i+1:]
		if !digestRE.MatchString(d) {
			return badRef(s, "digest %q must be ALGORITHM:HEX, e.g. sha256: followed by 64 lowercase hex digits", d)
		}
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, ':'); i > strings.LastIndexByte(rest, '/') {
		if !allowTagDigest {
			return badRef(s, "a repository name has no :TAG; give HOST[:PORT]/PATH")
		}
		tag := rest[i+1:]
		if !tagRE.MatchString(tag) {
			return badRef(s, "tag %q must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'", tag)
		}
		rest = rest[:i]
	}
	parts := strings.Split(rest, "/")
	if len(parts) > 1 && (strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
		if err := checkHost(s, parts[0]); err != nil {
			return err
		}
		parts = parts[1:]
	}
	for _, p := range parts {
		if !pathComponentRE.MatchString(p) {
			return badRef(s, "repository path component %q must be lowercase letters and digits, separated by '.', '_', '__' or '-' (%s)", p, refShape)
		}
	}
	if len(rest) > 255 {
		return badRef(s, "the repository name is %d characters long; the limit is 255", len(rest))
	}
	return nil
}

func checkHost(ref, host string) error {
	hostname, port := host, ""
	if h, p, err := net.SplitHostPort(host); err == nil {
		hostname, port = h, p
	}
	if port != "" {
		if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return badRef(ref, "registry port %q must be a number from 1 to 65535", port)
		}
	}
	if ip := net.ParseIP(strings.Trim(hostname, "[]")); ip != nil {
		return nil
	}
	for _, l := range strings.Split(hostname, ".") {
		if !hostLabelRE.MatchString(l) {
			return badRef(ref, "registry host %q must be a DNS name or IP address with an optional :PORT", host)
		}
	}
	return nil
}
