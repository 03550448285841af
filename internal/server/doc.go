// Package server assembles `riffle serve`: one process, one data directory,
// one HTTP listener serving
//
//   - /v2/       the embedded OCI registry (package registry);
//   - /healthz   liveness: 200 once every component is up;
//   - /metrics   Prometheus metrics of every component.
//
// Components are built from a Config, which is read from one YAML file whose
// keys are documented on Config's fields and in docs/config.md; flags override
// it. The data directory layout is:
//
//	DATA_DIR/registry/   registry storage
//	DATA_DIR/serve.addr  the address the running server listens on, so the
//	                     CLI can find it without flags
package server
