package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FileName is the token database's name in the data directory.
const FileName = "auth.db"

// TokenPrefix starts every Riffle token, so a leaked one is recognisable
// (secret scanners) and a mistyped credential is told apart from a token.
const TokenPrefix = "rfl_"

var bTokens = []byte("tokens") // sha256(secret) hex -> JSON Token

// Token is a stored token: everything but the secret.
type Token struct {
	ID       string     `json:"id"`
	Name     string     `json:"name,omitempty"`
	Bindings []Binding  `json:"bindings"`
	Created  time.Time  `json:"created"`
	Revoked  *time.Time `json:"revoked,omitempty"`
}

// Store keeps tokens in dataDir/auth.db. It is safe for concurrent use.
type Store struct {
	db *bolt.DB

	mu        sync.Mutex
	ephemeral map[[32]byte]*Identity // tokens that live only in this process; guarded by mu
}

// Open opens (creating when needed) dataDir/auth.db.
func Open(dataDir string) (*Store, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	path := filepath.Join(dataDir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("auth: open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bTokens)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("auth: %s: %w", path, err)
	}
	return &Store{db: db, ephemeral: map[[32]byte]*Identity{}}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// NewSecret returns a new random token.
func NewSecret() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand documents it panics instead)
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
}

func hash(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// Create stores a new token with bindings and returns its secret, which is
// not kept and cannot be shown again.
func (s *Store) Create(name string, bindings []Binding) (string, Token, error) {
	if len(bindings) == 0 {
		return "", Token{}, errors.New("auth: a token needs at least one role (--role ROLE --project PROJECT)")
	}
	for _, b := range bindings {
		if err := ValidateProject(b.Project); err != nil {
			return "", Token{}, err
		}
		if b.Role < RoleViewer || b.Role > RoleAdmin {
			return "", Token{}, fmt.Errorf("auth: role %d: use viewer, editor or admin", b.Role)
		}
	}
	var idb [6]byte
	rand.Read(idb[:])
	t := Token{ID: "tok-" + hex.EncodeToString(idb[:]), Name: name, Bindings: slices.Clone(bindings), Created: time.Now().UTC().Truncate(time.Second)}
	secret := NewSecret()
	h := hash(secret)
	raw, err := json.Marshal(t)
	if err != nil {
		return "", Token{}, fmt.Errorf("auth: %w", err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bTokens).Put([]byte(hex.EncodeToString(h[:])), raw)
	})
	if err != nil {
		return "", Token{}, fmt.Errorf("auth: storing token: %w", err)
	}
	return secret, t, nil
}

// List returns every stored token, revoked ones included, oldest first.
func (s *Store) List() ([]Token, error) {
	var ts []Token
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bTokens).ForEach(func(_, v []byte) error {
			var t Token
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			ts = append(ts, t)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("auth: listing tokens: %w", err)
	}
	slices.SortFunc(ts, func(a, b Token) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return ts, nil
}

// ErrNotFound is returned by Revoke for an ID or name no token has.
var ErrNotFound = errors.New("auth: no such token")

// Revoke marks the token with ID (or, if no ID matches, the one token
// named so) revoked, and returns it. Revoking twice is not an error.
func (s *Store) Revoke(idOrName string) (Token, error) {
	var out Token
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bTokens)
		var key []byte
		var byName [][]byte
		err := b.ForEach(func(k, v []byte) error {
			var t Token
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			if t.ID == idOrName {
				key, out = slices.Clone(k), t
			} else if t.Name == idOrName {
				byName = append(byName, slices.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		if key == nil {
			switch len(byName) {
			case 0:
				return fmt.Errorf("%w %q (see `riffle auth tokens list`)", ErrNotFound, idOrName)
			case 1:
				key = byName[0]
				if err := json.Unmarshal(b.Get(key), &out); err != nil {
					return err
				}
			default:
				return fmt.Errorf("auth: %d tokens are named %q: revoke one by its ID", len(byName), idOrName)
			}
		}
		if out.Revoked == nil {
			now := time.Now().UTC().Truncate(time.Second)
			out.Revoked = &now
		}
		raw, err := json.Marshal(out)
		if err != nil {
			return err
		}
		return b.Put(key, raw)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Token{}, err
		}
		return Token{}, fmt.Errorf("auth: revoking %s: %w", idOrName, err)
	}
	return out, nil
}

// AddEphemeral makes secret valid for id until the process ends, without
// storing it: the server's own requests to itself (index service, image
// pulls from the embedded registry) use one.
func (s *Store) AddEphemeral(secret string, id *Identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ephemeral[hash(secret)] = id
}

// Lookup returns the identity of secret. An empty, unknown or revoked
// secret is an *Error saying which.
func (s *Store) Lookup(secret string) (*Identity, error) {
	if secret == "" {
		return nil, unauthenticated(ReasonNoToken, "no token")
	}
	h := hash(secret)
	s.mu.Lock()
	for k, id := range s.ephemeral {
		if subtle.ConstantTimeCompare(k[:], h[:]) == 1 {
			s.mu.Unlock()
			return id, nil
		}
	}
	s.mu.Unlock()
	var raw []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bTokens).Get([]byte(hex.EncodeToString(h[:]))); v != nil {
			raw = slices.Clone(v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("auth: reading tokens: %w", err)
	}
	if raw == nil {
		return nil, unauthenticated(ReasonBadToken, "the token is not valid (unknown to this server)")
	}
	var t Token
	if err := json.Unmarshal(raw, &t); err != nil {
		return nil, fmt.Errorf("auth: token record: %w", err)
	}
	if t.Revoked != nil {
		return nil, unauthenticated(ReasonRevoked, "token %s was revoked at %s", t.ID, t.Revoked.Format(time.RFC3339))
	}
	return &Identity{TokenID: t.ID, Name: t.Name, Bindings: t.Bindings}, nil
}
