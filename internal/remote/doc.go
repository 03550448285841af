// Package remote is Riffle's registry client: every component that talks to
// an OCI registry (the streaming filesystem, the index service, the executor,
// the CLI) goes through a [Client].
//
// It is a thin layer over go-containerregistry (pkg/name, pkg/authn,
// pkg/v1/remote and its transport) that adds what Riffle needs on top:
//
//   - [Client.Resolve] turns a reference into one platform's manifest and
//     config, as OCI image-spec types, through image indexes and Docker
//     manifest lists. Docker schema 1 manifests are refused with [ErrSchema1].
//   - [Client.Blob] gives ranged reads: a [Blob] is an [io.ReaderAt] whose
//     every ReadAt is one HTTP GET with a Range header, so a lazy filesystem
//     can fetch exactly the bytes a process touches. A registry that ignores
//     Range fails loudly with [ErrRangeNotSupported] instead of silently
//     sending whole layers.
//   - [Client.Push], [Client.PushIndex], [Client.PutManifest],
//     [Client.Catalog] and [Client.Tags] for the CLI and tests.
//
// Registry answers that callers act on are wrapped with sentinels
// ([ErrUnauthorized], [ErrDenied], [ErrNotFound], [ErrSchema1],
// [ErrNoMatchingPlatform], [ErrDigestMismatch], [ErrBadReference]) next to
// the registry's own error codes, and say how to fix the problem where
// there is a fix. [Client.Stats] counts requests, retries and bytes, for
// metrics.
//
// # Transport
//
// All requests, including ranged reads and redirects to blob storage, go
// through one stack per client:
//
//	go-containerregistry auth (anonymous, basic, bearer token with scopes)
//	  -> user agent
//	  -> unreachable-registry breaker (ErrUnreachable at once, probes)
//	  -> retries (exponential backoff with jitter, Retry-After) and per-request timeouts
//	  -> plain-HTTP policy and counters
//	  -> net/http
//
// Credentials come from an [authn.Keychain], by default the docker
// config.json (DOCKER_CONFIG) and its credential helpers. Authenticated
// transports are cached per registry and scope, so the bearer-token
// handshake happens once and tokens are refreshed on 401 by
// go-containerregistry.
//
// A registry host that has not answered for [Options.UnreachableAfter]
// (default 30 s of failures only) is unreachable: requests to it fail at
// once with [ErrUnreachable] until a probe (GET /v2/, every
// [Options.ProbeInterval]) gets an answer, so a lazy filesystem's reads
// fail fast instead of each waiting out its own timeout.
//
// Only idempotent requests are retried by the transport; blob uploads are
// retried whole by go-containerregistry's push with the same policy, and a
// blob body cut midway is resumed with a Range request from where it
// stopped.
//
// # Plain HTTP
//
// Plain HTTP is used only for loopback hosts (127.0.0.0/8, ::1, localhost)
// and hosts listed in [Options.Insecure]; every other request must be
// https. The rule is enforced at the bottom of the stack, so redirects and
// token realms obey it too.
package remote
