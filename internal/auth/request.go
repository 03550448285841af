package auth

import (
	"context"
	"encoding/base64"
	"net/http"
	"strings"
)

// FromHeader extracts a token from an Authorization header value:
// "Bearer TOKEN", or "Basic base64(USER:TOKEN)" with any user name (the
// registry clients' login). It returns "" when there is none.
func FromHeader(h string) string {
	scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok {
		return ""
	}
	rest = strings.TrimSpace(rest)
	switch strings.ToLower(scheme) {
	case "bearer":
		return rest
	case "basic":
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return ""
		}
		_, pass, _ := strings.Cut(string(raw), ":")
		return pass
	}
	return ""
}

// FromRequest is FromHeader of r's Authorization header.
func FromRequest(r *http.Request) string { return FromHeader(r.Header.Get("Authorization")) }

type ctxKey struct{}

// WithIdentity returns ctx carrying id, for code behind the middleware
// (submit-time checks) that needs to know who asks.
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// IdentityFrom returns the identity WithIdentity stored, or nil.
func IdentityFrom(ctx context.Context) *Identity {
	id, _ := ctx.Value(ctxKey{}).(*Identity)
	return id
}
