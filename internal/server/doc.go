// Package server assembles `riffle serve`: one process, one data directory,
// one HTTP listener serving
//
//   - /v2/       the embedded OCI registry (package registry);
//   - /v1/       the Google Batch v1 REST API (package batch/api), and the
//     same API over gRPC (google.cloud.batch.v1.BatchService,
//     google.longrunning.Operations) on the same port: gRPC clients speak
//     HTTP/2 without TLS, which the listener accepts beside HTTP/1.1;
//   - /index/    the index service (package indexsvc): layer indexes for
//     nodes; images pushed to the embedded registry are indexed at once;
//   - /riffle/v1/logs/{job}  a job's task logs (?task=N&follow=true);
//   - /riffle/v1/arrival/{job}  how each task's images arrived, structured
//     (arrival.go; read-only, viewer);
//   - /riffle/v1/auth/       token management (auth_tokens.go);
//   - / and /console/  the web console's static pages (package console;
//     open: they hold no data and call the API with the user's token);
//   - /healthz   liveness: 200 once every component is up;
//   - /metrics   Prometheus metrics of every component.
//
// Components are built from a Config, which is read from one YAML file whose
// keys are documented on Config's fields and in docs/config.md; flags override
// it. The data directory layout is:
//
//	DATA_DIR/registry/   registry storage
//	DATA_DIR/batch.db    jobs, tasks and operations (bbolt)
//	DATA_DIR/indexes/    layer indexes by layer digest
//	DATA_DIR/cache/      node cache of streamed image data (package cache)
//	DATA_DIR/images/     pulled images and streamed mounts
//	DATA_DIR/runtime/    runc state and task bundles
//	DATA_DIR/batch/      task logs and work directories
//	DATA_DIR/serve.addr  the address the running server listens on, so the
//	                     CLI can find it without flags
//	DATA_DIR/auth.db     token hashes and roles (package auth)
//	DATA_DIR/admin.token the local admin token (0600), for the CLI
//
// # Access control
//
// Every request but /healthz, the console's static pages (and /metrics from
// loopback) needs a token with
// a role in the project it touches (package auth; docs/security.md). guard
// (auth.go) checks HTTP requests before the mux, the gRPC interceptors
// (auth_grpc.go) check RPCs; both count refusals and write the audit log. At
// submit, admitSecurity (admit_security.go) refuses host paths outside
// hostPaths, isolation-breaking container options from non-admins, images
// of other projects and registries in private ranges (outbound.go, also
// enforced when dialling). The server reaches its own registry with an
// in-memory token (selfKeychain), over TLS pinned to its certificate when
// TLS is on (tls.go). Script runnables run confined (scheduler.ScriptPolicy).
package server
