// Package auth holds Riffle's identities and roles: bearer tokens, stored
// only as SHA-256 hashes in their own bbolt file in the data directory, each
// with a role per project, and the checks every endpoint makes with them.
//
// # Roles
//
// A token carries one or more bindings of a role to a project ("*" means
// every project). Roles are ordered, each including the one below:
//
//   - viewer: get and list jobs and tasks, read logs, pull images;
//   - editor: viewer, plus create, cancel and delete jobs, push and delete
//     images;
//   - admin: everything, including managing tokens and the host-level
//     powers (unconfined script runnables).
//
// # Tokens
//
// A token is "rfl_" followed by 43 base64url characters (32 random bytes).
// It is shown once, when created; the store keeps its SHA-256, so a copy of
// the database does not give access. A revoked token stays in the store,
// marked, so that requests with it are told it was revoked rather than
// that it is unknown.
//
// Callers present a token as "Authorization: Bearer TOKEN" (Batch REST and
// gRPC, logs, index service) or as the password of HTTP Basic auth with any
// user name (registry clients: docker, skopeo, crane), as Artifact Registry
// takes an OAuth2 access token with the user oauth2accesstoken.
package auth
