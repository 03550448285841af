package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"runtime/trace"
)

// mountMemoryLimit is the Go heap's soft limit in a process that serves
// one image's mount (riffle run, riffle mount): the image's index and
// tree stay well below it, and past it the collector runs more often
// instead of letting span buffers pile up. Reading every file of a 1 GB
// image peaked at 210 MiB RSS without it and 150 MiB with 128 MiB, for the
// same CPU time. Layer streams decode into about 30 MB of memory outside
// the heap (streamfs chunk buffers), so the heap gets 100 MiB: the live
// heap there is about 60 MB. GOMEMLIMIT overrides it.
const mountMemoryLimit = 100 << 20

// limitMountMemory sets mountMemoryLimit unless GOMEMLIMIT is set.
func limitMountMemory() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(mountMemoryLimit)
	}
}

// startProfiling starts a CPU profile and an execution trace of this
// process when RIFFLE_CPUPROFILE or RIFFLE_TRACE name a file, and writes
// an allocation profile at the end when RIFFLE_MEMPROFILE does: the
// benchmark (bench/cmd/startbench) uses them to see where a start spends
// its time. The returned function stops them and writes the files.
func startProfiling() (stop func()) {
	var stops []func()
	if p := os.Getenv("RIFFLE_CPUPROFILE"); p != "" {
		if f, err := os.Create(p); err != nil {
			fmt.Fprintf(os.Stderr, "riffle: RIFFLE_CPUPROFILE: %v\n", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "riffle: RIFFLE_CPUPROFILE: %v\n", err)
			f.Close()
		} else {
			stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	if p := os.Getenv("RIFFLE_TRACE"); p != "" {
		if f, err := os.Create(p); err != nil {
			fmt.Fprintf(os.Stderr, "riffle: RIFFLE_TRACE: %v\n", err)
		} else if err := trace.Start(f); err != nil {
			fmt.Fprintf(os.Stderr, "riffle: RIFFLE_TRACE: %v\n", err)
			f.Close()
		} else {
			stops = append(stops, func() { trace.Stop(); f.Close() })
		}
	}
	if p := os.Getenv("RIFFLE_MEMPROFILE"); p != "" {
		stops = append(stops, func() {
			f, err := os.Create(p)
			if err == nil {
				err = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "riffle: RIFFLE_MEMPROFILE: %v\n", err)
			}
		})
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}
