// Package api serves Riffle's Batch resources with the Google Batch v1
// API, so tools written for Google Batch (gcloud-style CLIs, the official
// cloud.google.com/go/batch/apiv1 client over REST or gRPC) work against
// a local Riffle.
//
// # One service, two transports
//
// Server implements google.cloud.batch.v1.BatchService,
// google.longrunning.Operations and google.cloud.location.Locations as
// plain Go methods. RegisterGRPC registers them on a grpc.Server;
// HTTPHandler transcodes the REST mapping Google publishes for the same
// methods onto them, so both transports share validation, defaults and
// errors. `riffle serve` should serve gRPC on its own port (a plain
// grpc.Server on a second listener, built with GRPCServerOptions): it keeps
// HTTP/1.1 REST clients and HTTP/2 gRPC clients from depending on h2c
// negotiation.
//
// # REST conventions
//
// Bodies are strict proto-JSON (job.Unmarshal in Strict mode): unknown
// fields and single values for lists are refused naming the field path;
// int64 as strings or numbers, enums as names or numbers and durations as
// "3600s" are accepted, as protojson does. Errors are the google.rpc.Status
// envelope {"error":{"code","message","status","details"}} with the HTTP
// code Google maps each canonical code to, and a google.rpc.BadRequest
// detail listing field violations for INVALID_ARGUMENT. Bodies over
// Options.MaxBodyBytes get 413 and the connection is closed.
//
// # Running jobs
//
// The API runs nothing. A Runner (the scheduler) is told of new jobs and
// of cancels and deletes, and reports back only through the store. With no
// runner, jobs stay QUEUED and cancel and delete complete at once.
package api
