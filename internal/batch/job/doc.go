// Package job turns Google Batch job configs into batchpb.Job messages and
// decides whether Riffle can run them.
//
// # Parsing
//
// Parse walks the decoded JSON alongside the Job message descriptor before
// handing it to protojson, so every error names the field path
// ("taskGroups[0].taskSpec.runnables[1].container.imageUri: must not be
// empty") instead of protojson's byte offset. Strict mode is the REST
// API's contract; Lenient mode adds what gcloud accepts (YAML, a single
// value where a list is expected, loose scalar types, enum names in any
// case). Both accept lowerCamel and snake_case names, as protojson does,
// and both refuse unknown fields.
//
// # Validation and defaults
//
// Validate checks what the schema cannot (required fields, ranges,
// formats); ValidateJobID checks an ID against Batch's rule and NewJobID
// makes one. Prepare fills in what Batch fills in: name, uid, task group
// name group0, taskCount 1, parallelism, computeResource 2000 mCPU /
// 2000 MiB, maxRunDuration 7 days, status QUEUED, create and update times.
//
// # What one machine cannot do
//
// Check lists the features a single machine cannot honour, each with an
// Action. The rule: Riffle refuses a job when running it without the
// feature would change what its programs see (GCS and disk volumes,
// attached disks, GPUs, Secret Manager or KMS variables, instance
// templates it cannot inspect); it ignores, with a status event on the
// job, features that only choose where, on what hardware class, as whom
// or at what price Google runs the job, or how Google reports on it
// (machine type, Spot, location, network, service account, boot disk,
// Pub/Sub notifications, Cloud Logging). Nothing is dropped silently.
package job
