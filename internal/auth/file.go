package auth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AdminTokenFile is where `riffle serve` leaves the local admin token in
// its data directory (mode 0600), for the CLI on the same machine.
const AdminTokenFile = "admin.token"

// AdminTokenPath is AdminTokenFile in dataDir.
func AdminTokenPath(dataDir string) string { return filepath.Join(dataDir, AdminTokenFile) }

// ReadTokenFile reads a token written by EnsureAdminToken (or by hand).
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// EnsureAdminToken makes sure dataDir/admin.token holds a valid admin
// token for every project: it keeps a valid one and otherwise creates a
// token named "local admin" and writes it (0600). It reports whether it
// made a new one.
func (s *Store) EnsureAdminToken(dataDir string) (bool, error) {
	path := AdminTokenPath(dataDir)
	if secret, err := ReadTokenFile(path); err == nil {
		id, err := s.Lookup(secret)
		if err == nil && id.RoleIn(AllProjects) == RoleAdmin {
			return false, nil
		}
		var aerr *Error
		if err != nil && !errors.As(err, &aerr) {
			return false, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("auth: %w", err)
	}
	secret, _, err := s.Create("local admin", []Binding{{Project: AllProjects, Role: RoleAdmin}})
	if err != nil {
		return false, err
	}
	tmp := path + ".tmp"
	os.Remove(tmp)
	if err := os.WriteFile(tmp, []byte(secret+"\n"), 0o600); err != nil {
		return false, fmt.Errorf("auth: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("auth: writing %s: %w", path, err)
	}
	return true, nil
}
