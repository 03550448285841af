package fstree

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"
)

// Field names one compared property of an Entry.
type Field string

// The fields Diff compares.
const (
	FieldType     Field = "type"
	FieldMode     Field = "mode"
	FieldUID      Field = "uid"
	FieldGID      Field = "gid"
	FieldSize     Field = "size"
	FieldMtime    Field = "mtime"
	FieldLinkname Field = "linkname"
	FieldXattrs   Field = "xattrs"
	FieldNlink    Field = "nlink"
	FieldDevice   Field = "device"
	FieldSHA256   Field = "sha256"
	FieldHardlink Field = "hardlink"
)

// DiffOption changes what Diff compares.
type DiffOption func(*diffConfig)

type diffConfig struct {
	ignore        map[Field]bool
	ignoreDirLink bool
	ignoreXattr   map[string]bool
}

// Ignore leaves fields out of the comparison.
func Ignore(fields ...Field) DiffOption {
	return func(c *diffConfig) {
		for _, f := range fields {
			c.ignore[f] = true
		}
	}
}

// IgnoreDirNlink leaves the link count of directories out (it counts
// subdirectories, which some filesystems do not report).
func IgnoreDirNlink() DiffOption {
	return func(c *diffConfig) { c.ignoreDirLink = true }
}

// IgnoreXattrs leaves the named extended attributes out, for attributes a
// host adds on its own (security.selinux, for example).
func IgnoreXattrs(names ...string) DiffOption {
	return func(c *diffConfig) {
		for _, n := range names {
			c.ignoreXattr[n] = true
		}
	}
}

// Diff returns the differences between trees a and b, one human-readable
// line each, in path order; nil when they are equal. Lines read
// "PATH: FIELD: A != B", "PATH: only in a (TYPE)" or "PATH: only in b (TYPE)".
func Diff(a, b Tree, opts ...DiffOption) []string {
	c := diffConfig{ignore: map[Field]bool{}, ignoreXattr: map[string]bool{}}
	for _, o := range opts {
		o(&c)
	}
	var out []string
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].Path < b[j].Path):
			out = append(out, fmt.Sprintf("%s: only in a (%s)", a[i].Path, a[i].Type))
			i++
		case i == len(a) || b[j].Path < a[i].Path:
			out = append(out, fmt.Sprintf("%s: only in b (%s)", b[j].Path, b[j].Type))
			j++
		default:
			out = append(out, c.entry(a[i], b[j])...)
			i++
			j++
		}
	}
	return out
}

func (c *diffConfig) entry(a, b Entry) []string {
	var out []string
	add := func(f Field, av, bv string) {
		if !c.ignore[f] && av != bv {
			out = append(out, fmt.Sprintf("%s: %s: %s != %s", a.Path, f, av, bv))
		}
	}
	add(FieldType, string(a.Type), string(b.Type))
	add(FieldMode, fmt.Sprintf("%#o", a.Mode), fmt.Sprintf("%#o", b.Mode))
	add(FieldUID, strconv.FormatUint(uint64(a.UID), 10), strconv.FormatUint(uint64(b.UID), 10))
	add(FieldGID, strconv.FormatUint(uint64(a.GID), 10), strconv.FormatUint(uint64(b.GID), 10))
	add(FieldSize, strconv.FormatInt(a.Size, 10), strconv.FormatInt(b.Size, 10))
	add(FieldMtime, a.Mtime.Format(time.RFC3339Nano), b.Mtime.Format(time.RFC3339Nano))
	add(FieldLinkname, strconv.Quote(a.Linkname), strconv.Quote(b.Linkname))
	add(FieldXattrs, c.xattrs(a.Xattrs), c.xattrs(b.Xattrs))
	if !(c.ignoreDirLink && a.Type == Dir && b.Type == Dir) {
		add(FieldNlink, strconv.FormatUint(a.Nlink, 10), strconv.FormatUint(b.Nlink, 10))
	}
	add(FieldDevice, fmt.Sprintf("%d:%d", a.Devmajor, a.Devminor), fmt.Sprintf("%d:%d", b.Devmajor, b.Devminor))
	add(FieldSHA256, a.SHA256, b.SHA256)
	add(FieldHardlink, strconv.Quote(a.HardlinkTo), strconv.Quote(b.HardlinkTo))
	return out
}

// xattrs formats x sorted by name, with values quoted so binary ones
// stay readable.
func (c *diffConfig) xattrs(x map[string]string) string {
	s := "{"
	for i, k := range slices.Sorted(maps.Keys(x)) {
		if c.ignoreXattr[k] {
			continue
		}
		if i > 0 && s != "{" {
			s += " "
		}
		s += k + "=" + strconv.Quote(x[k])
	}
	return s + "}"
}

// String formats e on one line, for test logs.
func (e Entry) String() string {
	s := fmt.Sprintf("%s %s %#o %d:%d", e.Path, e.Type, e.Mode, e.UID, e.GID)
	switch e.Type {
	case Regular:
		s += fmt.Sprintf(" size=%d sha256=%.12s", e.Size, e.SHA256)
	case Symlink:
		s += " -> " + strconv.Quote(e.Linkname)
	case Char, Block:
		s += fmt.Sprintf(" %d:%d", e.Devmajor, e.Devminor)
	}
	s += fmt.Sprintf(" nlink=%d mtime=%s", e.Nlink, e.Mtime.Format(time.RFC3339Nano))
	if e.HardlinkTo != "" && e.HardlinkTo != e.Path {
		s += " hardlink=" + e.HardlinkTo
	}
	if len(e.Xattrs) > 0 {
		s += fmt.Sprintf(" xattrs=%d", len(e.Xattrs))
	}
	return s
}
