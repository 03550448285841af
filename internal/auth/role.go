package auth

import (
	"fmt"
	"strings"
)

// Role is what a token may do in a project. Higher roles include lower
// ones.
type Role int

// Roles, from least to most powerful. RoleNone is the absence of a role.
const (
	RoleNone Role = iota
	RoleViewer
	RoleEditor
	RoleAdmin
)

// AllProjects is the project of a binding that applies to every project.
const AllProjects = "*"

// String is the role's name as written in flags, the API and messages.
func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleEditor:
		return "editor"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// ParseRole parses viewer, editor or admin.
func ParseRole(s string) (Role, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "viewer":
		return RoleViewer, nil
	case "editor":
		return RoleEditor, nil
	case "admin":
		return RoleAdmin, nil
	}
	return RoleNone, fmt.Errorf("auth: role %q: use viewer, editor or admin", s)
}

// MarshalText writes the role's name.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses a role's name.
func (r *Role) UnmarshalText(b []byte) error {
	v, err := ParseRole(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// Binding gives Role in Project (or in every project when Project is
// AllProjects).
type Binding struct {
	Project string `json:"project"`
	Role    Role   `json:"role"`
}

// String is "role@project".
func (b Binding) String() string { return b.Role.String() + "@" + b.Project }

// ValidateProject checks a binding's project: "*" or a project ID
// (lowercase letters, digits and dashes, as Batch and the registry's
// first path component use).
func ValidateProject(p string) error {
	if p == AllProjects {
		return nil
	}
	if p == "" {
		return fmt.Errorf("auth: project: give a project ID, or * for every project")
	}
	for _, r := range p {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("auth: project %q: use lowercase letters, digits, dashes, dots or underscores, or * for every project", p)
		}
	}
	return nil
}

// Identity is who made a request: the token's ID and name and its
// bindings.
type Identity struct {
	// TokenID identifies the token in lists and audit logs (never the
	// secret).
	TokenID string
	// Name is the token's human name.
	Name string
	// Bindings are the token's roles.
	Bindings []Binding
}

// String names the identity in messages and audit logs.
func (id *Identity) String() string {
	if id == nil {
		return "anonymous"
	}
	if id.Name != "" {
		return id.Name + " (" + id.TokenID + ")"
	}
	return id.TokenID
}

// RoleIn is the identity's highest role in project, counting bindings to
// AllProjects. A nil identity has none.
func (id *Identity) RoleIn(project string) Role {
	if id == nil {
		return RoleNone
	}
	best := RoleNone
	for _, b := range id.Bindings {
		if (b.Project == project || b.Project == AllProjects) && b.Role > best {
			best = b.Role
		}
	}
	return best
}

// HighestRole is the identity's highest role in any project.
func (id *Identity) HighestRole() Role {
	if id == nil {
		return RoleNone
	}
	best := RoleNone
	for _, b := range id.Bindings {
		best = max(best, b.Role)
	}
	return best
}
