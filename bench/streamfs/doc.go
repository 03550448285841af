// Package streamfs benchmarks reads from a lazily mounted image against
// reads of the same file from a plain directory (the full pull): cold
// (fetched from the registry), warm from cached spans (served by the
// daemon), and warm by FUSE passthrough from the cached whole file.
//
// Run it as root with
//
//	RIFFLE_BENCH=1 go test -run TestReadSpeed -v ./bench/streamfs/
//
// RIFFLE_BENCH_MB sets the file size (default 256). It prints MB/s and
// the ratio to the plain directory for each case, all measured in one run.
package streamfs
