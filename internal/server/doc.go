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
package server
