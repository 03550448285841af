package elfdeps

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// hostObjects returns up to n 64-bit little-endian ELF objects of this
// machine (programs and libraries), by path.
func hostObjects(t testing.TB, n int) []string {
	var out []string
	for _, dir := range []string{"/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if len(out) >= n {
				return out
			}
			p := filepath.Join(dir, e.Name())
			if !e.Type().IsRegular() {
				continue
			}
			f, err := elf.Open(p)
			if err != nil {
				continue
			}
			if f.Class == elf.ELFCLASS64 && f.Data == elf.ELFDATA2LSB {
				out = append(out, p)
			}
			f.Close()
		}
	}
	if len(out) == 0 {
		t.Fatal("no ELF objects on this machine")
	}
	return out
}

// TestReadMatchesDebugELF: for the programs and libraries of this machine,
// Read finds the libraries debug/elf finds through the section headers,
// and its machine; the run path matches too.
func TestReadMatchesDebugELF(t *testing.T) {
	for _, p := range hostObjects(t, 400) {
		f, err := elf.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		want, werr := f.ImportedLibraries()
		wantRun, _ := f.DynString(elf.DT_RUNPATH)
		wantRPath, _ := f.DynString(elf.DT_RPATH)
		mach := f.Machine
		f.Close()
		if werr != nil {
			continue
		}
		r, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := r.Stat()
		needed, runpath, gotMach, err := Read(r, st.Size())
		r.Close()
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if !slices.Equal(needed, want) && !(len(needed) == 0 && len(want) == 0) {
			t.Errorf("%s: needs %q, debug/elf says %q", p, needed, want)
		}
		if wantAll := append(wantRun, wantRPath...); !slices.Equal(slices.Sorted(slices.Values(runpath)), slices.Sorted(slices.Values(wantAll))) && !(len(runpath) == 0 && len(wantAll) == 0) {
			t.Errorf("%s: run path %q, debug/elf says %q", p, runpath, wantAll)
		}
		if len(want) > 0 && gotMach != mach {
			t.Errorf("%s: machine %v, debug/elf says %v", p, gotMach, mach)
		}
	}
}

// TestReadShortFile: a file cut anywhere before its string table ends
// gives an error, never a partial answer read past the end.
func TestReadShortFile(t *testing.T) {
	b, err := os.ReadFile(hostObjects(t, 1)[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 3, 10, 63, 64, 100} {
		if _, _, _, err := Read(bytes.NewReader(b[:n]), int64(n)); err == nil {
			t.Errorf("a file cut to %d bytes read without an error", n)
		}
	}
}

// minimalELF is a 512-byte ELF object that needs lib and has run path
// runpath: a small seed (the fuzzer minimises large ones slowly).
func minimalELF(lib, runpath string) []byte {
	const dynOff, strOff = 256, 384
	hdr := elf.Header64{Type: uint16(elf.ET_DYN), Machine: uint16(elf.EM_X86_64), Version: 1, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: 2}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS], hdr.Ident[elf.EI_DATA], hdr.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), 1
	progs := []elf.Prog64{
		{Type: uint32(elf.PT_LOAD), Filesz: 512, Memsz: 512},
		{Type: uint32(elf.PT_DYNAMIC), Off: dynOff, Vaddr: dynOff, Filesz: 5 * 16, Memsz: 5 * 16},
	}
	strs := "\x00" + lib + "\x00" + runpath + "\x00"
	dyn := []elf.Dyn64{
		{Tag: int64(elf.DT_NEEDED), Val: 1}, {Tag: int64(elf.DT_RUNPATH), Val: uint64(2 + len(lib))},
		{Tag: int64(elf.DT_STRTAB), Val: strOff}, {Tag: int64(elf.DT_STRSZ), Val: uint64(len(strs))}, {},
	}
	b := make([]byte, 512)
	var w bytes.Buffer
	_ = binary.Write(&w, binary.LittleEndian, hdr) // fixed-size values to a buffer: no error
	_ = binary.Write(&w, binary.LittleEndian, progs)
	copy(b, w.Bytes())
	w.Reset()
	_ = binary.Write(&w, binary.LittleEndian, dyn)
	copy(b[dynOff:], w.Bytes())
	copy(b[strOff:], strs)
	return b
}

// TestReadMinimal reads minimalELF back.
func TestReadMinimal(t *testing.T) {
	b := minimalELF("libc.so.6", "$ORIGIN/lib")
	needed, runpath, mach, err := Read(bytes.NewReader(b), int64(len(b)))
	if err != nil || !slices.Equal(needed, []string{"libc.so.6"}) || !slices.Equal(runpath, []string{"$ORIGIN/lib"}) || mach != elf.EM_X86_64 {
		t.Fatalf("got %q, %q, %v, %v", needed, runpath, mach, err)
	}
}

// FuzzRead: no input panics, allocates beyond the bounds, or names more
// than maxNeeded libraries.
func FuzzRead(f *testing.F) {
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Add(minimalELF("libc.so.6", "$ORIGIN/lib"))
	f.Fuzz(func(t *testing.T, b []byte) {
		needed, _, _, err := Read(bytes.NewReader(b), int64(len(b)))
		if err == nil && len(needed) > maxNeeded {
			t.Fatalf("%d libraries", len(needed))
		}
	})
}
