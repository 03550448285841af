// Package registry embeds an OCI distribution registry
// (github.com/distribution/distribution/v3) in Riffle's server.
//
// The registry stores images on the local filesystem under one directory,
// so they survive restarts, and supports deletes. Image names follow
// Artifact Registry's shape, HOST:PORT/PROJECT/REPOSITORY/IMAGE:TAG; the
// registry itself treats every path component alike.
//
// # Hooks
//
// Riffle needs to know when an image lands (the index service indexes it at
// once). Distribution reports pushes through HTTP notification endpoints; an
// in-process server has no use for a loopback round trip, so Registry watches
// its own responses instead: every manifest PUT that succeeds is reported to
// Options.OnPush after the response is written.
//
// # Limits
//
// Distribution caps manifests at 4 MiB and refuses blobs whose digest does
// not match. Registry adds a cap on blob uploads (Options.MaxBlobBytes), so a
// runaway client gets a clear 413 instead of filling the disk.
//
// # Logging
//
// Distribution logs through logrus's global logger. New points that logger at
// the slog.Logger in Options (or discards it), which is a process-wide change:
// there is one embedded registry per process.
package registry
