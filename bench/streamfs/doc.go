// Package streamfs benchmarks reads from a lazily mounted image against
// reads of the same data from a plain directory or an overlayfs of the
// extracted layers (the full pull). Every case runs as root, in one
// process with an in-process registry on loopback; none is part of the
// test suite.
//
// TestReadSpeed reads one big file sequentially (1 MiB reads): cold
// (fetched from the registry), warm from cached spans served by the
// daemon (span files hot, then evicted, for several kernel read-ahead
// windows), warm by FUSE passthrough from the cached whole file, and
// after a warm node extracted the layers from its cached spans:
//
//	RIFFLE_BENCH=1 RIFFLE_BENCH_MB=1024 go test -run TestReadSpeed -v ./bench/streamfs/
//
// RIFFLE_BENCH_MB sets the file size (default 256). It prints MB/s and
// the ratio to the plain directory for each case, all measured in one run.
//
// TestReadAllCold reads every file of the Debian + python image (or
// imagegen.Large) cold and warm; TestWarmImport runs python3 importing
// numpy, scipy and pandas on a warm node that has not settled (the
// workload's spans cached, the layer store empty) against an overlayfs of
// the extracted layers:
//
//	RIFFLE_BENCH=1 go test -run TestWarmImport -v -timeout 30m ./bench/streamfs/
//
// RIFFLE_BENCH_PPROF=DIR writes CPU profiles of the mount cases there.
package streamfs
