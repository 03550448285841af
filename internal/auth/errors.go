package auth

import (
	"errors"
	"fmt"
)

// Sentinels for the two ways a request is refused, matched with errors.Is
// against an *Error.
var (
	// ErrUnauthenticated: no token, or one that is unknown or revoked
	// (HTTP 401, gRPC UNAUTHENTICATED).
	ErrUnauthenticated = errors.New("auth: unauthenticated")
	// ErrPermissionDenied: a valid token without the role the request
	// needs (HTTP 403, gRPC PERMISSION_DENIED).
	ErrPermissionDenied = errors.New("auth: permission denied")
)

// Reason classifies a refusal for metrics and audit logs.
type Reason string

// Reasons a request is refused.
const (
	ReasonNoToken  Reason = "no_token"
	ReasonBadToken Reason = "bad_token"
	ReasonRevoked  Reason = "revoked_token"
	ReasonRole     Reason = "missing_role"
	ReasonPolicy   Reason = "policy"
)

// Error is a refusal with a message for the caller that says what is
// missing.
type Error struct {
	// Denied is true for a valid identity lacking a role (403), false
	// for missing or bad credentials (401).
	Denied bool
	Reason Reason
	Msg    string
}

func (e *Error) Error() string { return "auth: " + e.Msg }

// Is matches ErrUnauthenticated or ErrPermissionDenied.
func (e *Error) Is(target error) bool {
	if e.Denied {
		return target == ErrPermissionDenied
	}
	return target == ErrUnauthenticated
}

func unauthenticated(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Msg: fmt.Sprintf(format, args...)}
}

// Authorize checks that id holds at least need in project. An empty
// project means "in some project" (for resources that belong to none, like
// layer indexes addressed by digest). The error says which role is
// missing where.
func Authorize(id *Identity, project string, need Role) error {
	where := "project " + project
	if project == "" {
		where = "any project"
	}
	if id == nil {
		return unauthenticated(ReasonNoToken, "no token: this needs the %s role in %s; send Authorization: Bearer TOKEN (see `riffle auth tokens create`)", need, where)
	}
	have := id.RoleIn(project)
	if project == "" {
		have = id.HighestRole()
	}
	if have >= need {
		return nil
	}
	return &Error{Denied: true, Reason: ReasonRole,
		Msg: fmt.Sprintf("token %s has role %s in %s; this needs %s", id, have, where, need)}
}
