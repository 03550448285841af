// Package snapshotter adapts Riffle's streaming engine to containerd's remote
// snapshotter API, so containerd and Kubernetes nodes stream images too.
//
// Not built yet: see the project's issues.
package snapshotter
