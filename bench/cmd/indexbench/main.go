// Command indexbench measures how fast internal/index builds the index of
// a layer blob, and how large the index is, for one or more span sizes.
// bench/index-speed.sh runs it beside `gzip -dc` on the same layer.
//
// With -decode it also decodes every span of the layer on its own, from its
// checkpoint, as a node serving reads does (Index.DecodeInto, one reused
// buffer), and compares that with decompressing the whole blob in one
// stream the way `riffle pull` does (ocilayer.Decompress), in the same run.
//
//	indexbench -in layer.tar.gz -span 1,2,4,8 [-decode]
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/riffle-dev/riffle/internal/index"
	"github.com/riffle-dev/riffle/internal/index/ocilayer"
)

func main() {
	in := flag.String("in", "", "layer blob to index (required)")
	spans := flag.String("span", "4", "comma-separated span sizes in MiB")
	runs := flag.Int("runs", 1, "builds per span size; the fastest is reported")
	decode := flag.Bool("decode", false, "also time decoding every span against one whole-blob decompression")
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
		if *decode {
			if err := decodeSpans(*in, x, *runs); err != nil {
				fmt.Fprintln(os.Stderr, "indexbench:", err)
				os.Exit(1)
			}
		}
	}
}

// decodeSpans decodes every span of x from the blob in memory, one plan
// per span, and decompresses the whole blob in one stream; it prints the
// best of runs for each, in MB/s of tar, and their ratio.
func decodeSpans(path string, x *index.Index, runs int) error {
	blob, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var buf []byte
	var spans, whole time.Duration
	for range runs {
		start := time.Now()
		for i := range x.Spans {
			p, err := x.PlanSpans(i, i+1)
			if err != nil {
				return err
			}
			if n := x.DecodeSize(p); int64(cap(buf)) < n {
				buf = make([]byte, n)
			}
			if _, err := x.DecodeInto(p, blob[p.Offset:p.Offset+p.Length], buf); err != nil {
				return fmt.Errorf("span %d: %w", i, err)
			}
		}
		if d := time.Since(start); spans == 0 || d < spans {
			spans = d
		}
		start = time.Now()
		r, err := ocilayer.Decompress(bytes.NewReader(blob))
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
		r.Close()
		if d := time.Since(start); whole == 0 || d < whole {
			whole = d
		}
	}
	tarMB := float64(x.UncompressedSize) / 1e6
	fmt.Printf("  decode: spans %.1f MB/s, whole blob %.1f MB/s (ocilayer.Decompress), spans/whole %.2f\n",
		tarMB/spans.Seconds(), tarMB/whole.Seconds(), whole.Seconds()/spans.Seconds())
	return nil
}

// cpuTime is the user+system CPU time of this process: on a shared
// machine it is steadier than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
