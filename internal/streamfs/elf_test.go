package streamfs_test

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/riffle-dev/riffle/internal/imagegen"
	"github.com/riffle-dev/riffle/internal/streamfs"
	"github.com/riffle-dev/riffle/internal/testutil"
)

// fakeELF returns a 64-bit little-endian ELF object of size bytes that
// needs the libraries named needed, with run path runpath (if any), its
// dynamic section at the end, as in a real library.
func fakeELF(size int, needed []string, runpath string) []byte {
	strs := []byte{0}
	str := func(s string) uint64 {
		off := uint64(len(strs))
		strs = append(append(strs, s...), 0)
		return off
	}
	var dyn []elf.Dyn64
	for _, n := range needed {
		dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_NEEDED), Val: str(n)})
	}
	if runpath != "" {
		dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_RUNPATH), Val: str(runpath)})
	}
	const strOff = 4096
	dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_STRTAB), Val: strOff},
		elf.Dyn64{Tag: int64(elf.DT_STRSZ), Val: uint64(len(strs))}, elf.Dyn64{Tag: int64(elf.DT_NULL)})
	dynOff := size - 16*len(dyn)
	hdr := elf.Header64{Type: uint16(elf.ET_DYN), Machine: uint16(elf.EM_X86_64), Version: 1,
		Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: 2}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS], hdr.Ident[elf.EI_DATA], hdr.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), 1
	progs := []elf.Prog64{
		{Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R), Filesz: uint64(size), Memsz: uint64(size), Align: 4096},
		{Type: uint32(elf.PT_DYNAMIC), Flags: uint32(elf.PF_R | elf.PF_W), Off: uint64(dynOff), Vaddr: uint64(dynOff),
			Filesz: uint64(16 * len(dyn)), Memsz: uint64(16 * len(dyn))},
	}
	var b bytes.Buffer
	// Writing fixed-size values to a buffer cannot fail.
	_ = binary.Write(&b, binary.LittleEndian, hdr)
	_ = binary.Write(&b, binary.LittleEndian, progs)
	out := make([]byte, size)
	copy(out, b.Bytes())
	copy(out[strOff:], strs)
	b.Reset()
	_ = binary.Write(&b, binary.LittleEndian, dyn)
	copy(out[dynOff:], b.Bytes())
	return out
}

// TestOpenFetchesNeededLibraries: opening a program served from its spans
// fetches the libraries it needs (DT_NEEDED, found through its run path,
// the system's library directories and symlinks), and the libraries those
// need, before the loader opens any of them; files between them are not
// fetched.
func TestOpenFetchesNeededLibraries(t *testing.T) {
	testutil.RequiresRoot(t)
	const spanSize = 64 << 10
	const libSize = 3 * spanSize
	filler := func(name string, seed uint64) imagegen.Entry {
		return imagegen.Entry{Type: imagegen.File, Name: name, Size: 8 * spanSize, Seed: seed, Fill: imagegen.Random}
	}
	entries := []imagegen.Entry{
		{Type: imagegen.Dir, Name: "usr"}, {Type: imagegen.Dir, Name: "usr/bin"}, {Type: imagegen.Dir, Name: "usr/lib"},
		{Type: imagegen.Dir, Name: "usr/lib/prog"}, {Type: imagegen.Dir, Name: "usr/lib/x86_64-linux-gnu"},
		{Type: imagegen.File, Name: "usr/bin/prog", Mode: 0o755,
			Data: fakeELF(libSize, []string{"libone.so.1", "libthree.so"}, "$ORIGIN/../lib/prog")},
		filler("usr/bin/zz", 1),
		{Type: imagegen.File, Name: "usr/lib/prog/libthree.so", Data: fakeELF(libSize, nil, "")},
		filler("usr/lib/prog/zz", 2),
		{Type: imagegen.Symlink, Name: "usr/lib/x86_64-linux-gnu/libone.so.1", Linkname: "libone.so.1.2.3"},
		{Type: imagegen.File, Name: "usr/lib/x86_64-linux-gnu/libone.so.1.2.3", Data: fakeELF(libSize, []string{"libtwo.so.2"}, "")},
		filler("usr/lib/x86_64-linux-gnu/libp", 3),
		{Type: imagegen.File, Name: "usr/lib/x86_64-linux-gnu/libtwo.so.2", Data: fakeELF(libSize, nil, "")},
		filler("usr/lib/x86_64-linux-gnu/zz", 4),
	}
	r := newTestRegistry(t)
	_, ref := r.push(t, imagegen.Spec{Layers: []imagegen.Layer{{Entries: entries}}}, "test/needed")
	img := r.open(t, ref, spanSize)
	m, dir := mount(t, img, streamfs.Options{Cache: newCache(t)})

	spans := img.Layers[0].Spans()
	first := map[string]int{}    // a file's first span
	inside := map[string][]int{} // the spans that hold nothing but the file
	for _, e := range img.Layers[0].Entries() {
		for i, s := range spans {
			if e.Size > 0 && e.Offset >= s.Offset && e.Offset < s.Offset+s.Size {
				first[e.Name] = i
			}
			if e.Size > 0 && s.Offset >= e.Offset && s.Offset+s.Size <= e.Offset+e.Size {
				inside[e.Name] = append(inside[e.Name], i)
			}
		}
	}
	f, err := os.Open(filepath.Join(dir, "usr/bin/prog"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(make([]byte, 64), 0); err != nil {
		t.Fatal(err)
	}
	libs := []string{"usr/lib/prog/libthree.so", "usr/lib/x86_64-linux-gnu/libone.so.1.2.3", "usr/lib/x86_64-linux-gnu/libtwo.so.2"}
	deadline := time.Now().Add(20 * time.Second)
	for _, lib := range libs {
		for !m.Cached(0, first[lib]) {
			if time.Now().After(deadline) {
				t.Fatalf("%s (span %d) not fetched after opening a program that needs it", lib, first[lib])
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	for _, name := range []string{"usr/bin/zz", "usr/lib/prog/zz", "usr/lib/x86_64-linux-gnu/libp", "usr/lib/x86_64-linux-gnu/zz"} {
		if len(inside[name]) == 0 {
			t.Fatalf("no span holds only %s", name)
		}
		for _, s := range inside[name] {
			if m.Cached(0, s) {
				t.Errorf("span %d, inside %s, fetched; no library needs it", s, name)
			}
		}
	}
}
