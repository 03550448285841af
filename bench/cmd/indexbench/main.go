// Command indexbench measures how fast internal/index builds the index of
// a layer blob, and how large the index is, for one or more span sizes.
// bench/index-speed.sh runs it beside `gzip -dc` on the same layer.
//
//	indexbench -in layer.tar.gz -span 1,2,4,8
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/riffle-dev/riffle/internal/index"
)

func main() {
	in := flag.String("in", "", "layer blob to index (required)")
	spans := flag.String("span", "4", "comma-separated span sizes in MiB")
	runs := flag.Int("runs", 1, "builds per span size; the fastest is reported")
	flag.Parse()
	if *in == "" {
		fmt.Fprintln(os.Stderr, "indexbench: -in is required")
		os.Exit(2)
	}
	st, err := os.Stat(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "indexbench:", err)
		os.Exit(1)
	}
	fmt.Printf("%-8s %10s %10s %12s %12s %10s %8s %12s %8s\n", "span", "blob MB", "tar MB", "MB/s(blob)", "MB/s(tar)", "cpu s", "spans", "index bytes", "index %")
	for _, s := range strings.Split(*spans, ",") {
		mib, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			fmt.Fprintln(os.Stderr, "indexbench: -span:", err)
			os.Exit(2)
		}
		var best, bestCPU time.Duration
		var x *index.Index
		var enc []byte
		for range *runs {
			f, err := os.Open(*in)
			if err != nil {
				fmt.Fprintln(os.Stderr, "indexbench:", err)
				os.Exit(1)
			}
			start, cpu0 := time.Now(), cpuTime()
			x, err = index.Build(bufio.NewReaderSize(f, 1<<20), "", index.Options{SpanSize: int64(mib * (1 << 20))})
			if err == nil {
				enc, err = x.MarshalBinary()
			}
			d, cpu := time.Since(start), cpuTime()-cpu0
			f.Close()
			if err != nil {
				fmt.Fprintln(os.Stderr, "indexbench:", err)
				os.Exit(1)
			}
			if best == 0 || d < best {
				best = d
			}
			if bestCPU == 0 || cpu < bestCPU {
				bestCPU = cpu
			}
		}
		blobMB := float64(st.Size()) / 1e6
		tarMB := float64(x.UncompressedSize) / 1e6
		fmt.Printf("%-8s %10.1f %10.1f %12.1f %12.1f %10.2f %8d %12d %8.3f\n", s+"MiB", blobMB, tarMB,
			blobMB/best.Seconds(), tarMB/best.Seconds(), bestCPU.Seconds(), len(x.Spans), len(enc), 100*float64(len(enc))/float64(st.Size()))
	}
}

// cpuTime is the user+system CPU time of this process: on a shared
// machine it is steadier than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
