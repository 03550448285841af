package server

import (
	"github.com/google/go-containerregistry/pkg/authn"
)

// selfKeychain gives the server's own token for requests to its embedded
// registry (index service, image pulls of tasks, submit checks), and the
// default docker keychain for every other registry.
type selfKeychain struct{ s *Server }

func (k selfKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if k.s.isSelf(r.RegistryStr()) {
		return &authn.Basic{Username: "riffle-server", Password: k.s.selfToken}, nil
	}
	return authn.DefaultKeychain.Resolve(r)
}
