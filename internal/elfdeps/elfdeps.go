package elfdeps

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
)

// Bounds on what Read reads of one file.
const (
	maxProgs    = 64
	maxDynamic  = 64 << 10
	maxNeeded   = 64
	maxRunPaths = 4
	maxName     = 4096
)

// Read reads the libraries an ELF object of size bytes needs
// (DT_NEEDED), its run paths (DT_RUNPATH, DT_RPATH) and its machine from
// r, through its program headers (no section headers: those sit at the
// file's end and a loader does without them). It reads 64-bit
// little-endian objects only, and little of them: bounded headers, dynamic
// section and string table.
func Read(r io.ReaderAt, size int64) (needed, runpath []string, mach elf.Machine, err error) {
	read := func(off int64, v any) error {
		n := binary.Size(v)
		if off < 0 || off+int64(n) > size {
			return fmt.Errorf("[%d, +%d) is outside the file's %d bytes", off, n, size)
		}
		b := make([]byte, n)
		if _, err := r.ReadAt(b, off); err != nil {
			return err
		}
		_, err := binary.Decode(b, binary.LittleEndian, v)
		return err
	}
	var hdr elf.Header64
	if err := read(0, &hdr); err != nil {
		return nil, nil, 0, err
	}
	if !bytes.Equal(hdr.Ident[:4], []byte(elf.ELFMAG)) || elf.Class(hdr.Ident[elf.EI_CLASS]) != elf.ELFCLASS64 ||
		elf.Data(hdr.Ident[elf.EI_DATA]) != elf.ELFDATA2LSB {
		return nil, nil, 0, fmt.Errorf("not a 64-bit little-endian ELF file")
	}
	if hdr.Phnum > maxProgs || hdr.Phentsize != 56 || hdr.Phoff > uint64(size) {
		return nil, nil, 0, fmt.Errorf("%d program headers of %d bytes at %d", hdr.Phnum, hdr.Phentsize, hdr.Phoff)
	}
	progs := make([]elf.Prog64, hdr.Phnum)
	if err := read(int64(hdr.Phoff), progs); err != nil {
		return nil, nil, 0, err
	}
	var dyn []elf.Dyn64
	for _, p := range progs {
		if elf.ProgType(p.Type) != elf.PT_DYNAMIC {
			continue
		}
		if p.Filesz > maxDynamic || p.Off > uint64(size) {
			return nil, nil, 0, fmt.Errorf("a dynamic section of %d bytes at %d", p.Filesz, p.Off)
		}
		dyn = make([]elf.Dyn64, p.Filesz/16)
		if err := read(int64(p.Off), dyn); err != nil {
			return nil, nil, 0, err
		}
	}
	var strtab, strsz uint64
	var neededAt, runpathAt []uint64
dynamic:
	for _, d := range dyn {
		switch elf.DynTag(d.Tag) {
		case elf.DT_NULL:
			break dynamic
		case elf.DT_NEEDED:
			neededAt = append(neededAt, d.Val)
		case elf.DT_STRTAB:
			strtab = d.Val
		case elf.DT_STRSZ:
			strsz = d.Val
		case elf.DT_RUNPATH, elf.DT_RPATH:
			runpathAt = append(runpathAt, d.Val)
		}
	}
	if len(neededAt) == 0 {
		return nil, nil, elf.Machine(hdr.Machine), nil
	}
	if len(neededAt) > maxNeeded || len(runpathAt) > maxRunPaths {
		return nil, nil, 0, fmt.Errorf("%d libraries, %d run paths", len(neededAt), len(runpathAt))
	}
	// The string table's address, as a file offset.
	off := int64(-1)
	for _, p := range progs {
		if elf.ProgType(p.Type) == elf.PT_LOAD && strtab >= p.Vaddr && strtab-p.Vaddr < p.Filesz &&
			p.Off <= uint64(size) && p.Filesz <= uint64(size)-p.Off {
			off = int64(p.Off + strtab - p.Vaddr)
		}
	}
	if off < 0 || off > size {
		return nil, nil, 0, fmt.Errorf("the string table at %#x is not in the file", strtab)
	}
	end := min(size, off+int64(min(strsz, uint64(size))))
	// str reads the string at i in the table: up to maxName bytes of it
	// (the table of a big program is megabytes of symbol names).
	str := func(i uint64) (string, error) {
		if i >= uint64(end-off) {
			return "", fmt.Errorf("a name at %d is past the string table's %d bytes", i, end-off)
		}
		b := make([]byte, min(maxName, end-off-int64(i)))
		if _, err := r.ReadAt(b, off+int64(i)); err != nil {
			return "", err
		}
		if k := bytes.IndexByte(b, 0); k >= 0 {
			b = b[:k]
		}
		return string(b), nil
	}
	for _, i := range neededAt {
		s, err := str(i)
		if err != nil {
			return nil, nil, 0, err
		}
		needed = append(needed, s)
	}
	for _, i := range runpathAt {
		s, err := str(i)
		if err != nil {
			return nil, nil, 0, err
		}
		runpath = append(runpath, s)
	}
	return needed, runpath, elf.Machine(hdr.Machine), nil
}

// LibDirs are the directories a Debian loader searches for a library of
// machine mach after the object's run path: ld.so.conf's multiarch
// directories, then the defaults.
func LibDirs(mach elf.Machine) []string {
	var dirs []string
	switch mach {
	case elf.EM_X86_64:
		dirs = []string{"/usr/local/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"}
	case elf.EM_AARCH64:
		dirs = []string{"/usr/local/lib/aarch64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"}
	}
	return append(dirs, "/usr/local/lib", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
}
