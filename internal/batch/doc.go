// Package batch is Riffle's implementation of the Google Batch v1 resource
// model: the jobs, tasks and long-running operations that tools written for
// Google Batch see, served over the same REST and gRPC wire protocols.
//
// # Tree
//
//   - job: turns job configs (proto-JSON, or the YAML/snake_case/single-value
//     forms gcloud accepts) into batchpb.Job, validates them with errors that
//     name the field path, fills in the defaults Batch fills in, and reports
//     the features a single machine cannot honour.
//   - store: the bbolt database in the data dir holding jobs, tasks,
//     operations and create request IDs, with the transactional state
//     transitions (and Batch-style status events) the scheduler calls.
//   - api: one service implementation served as the Batch v1 REST API under
//     /v1/ and as the google.cloud.batch.v1.BatchService and
//     google.longrunning.Operations gRPC services.
//   - scheduler: runs jobs on this machine (tasks as runc containers, their
//     images streamed or pulled); it implements api.Runner and reports
//     progress only through the store's helpers.
//   - logs: task log files in the data dir, read and followed by the API.
//
// The resource messages are the official ones from
// cloud.google.com/go/batch/apiv1/batchpb, so what Riffle stores and serves
// is byte-for-byte the Batch schema; Riffle adds nothing to it.
package batch
