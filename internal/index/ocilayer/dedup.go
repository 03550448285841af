package ocilayer

import (
	"archive/tar"
	"fmt"
	"strings"
)

// A layer may name one path more than once; applied in order, each entry
// replaces the one before (a directory over a directory merges). A file
// table keyed by name (the index's) keeps one entry per name, which is the
// same as applying every entry only when nothing between two entries of a
// name could see the earlier one. Dedup decides, entry by entry, what the
// table keeps and when it cannot be the same:
//
//   - A directory repeated as a directory is merged forward: the table
//     keeps the first entry's place, with the later entry's metadata and
//     the union of their xattrs (the later wins per key), as the merge on
//     extraction leaves them. Safe unless an entry between removes or
//     replaces the directory or one of its parents: a whiteout whose
//     victim, or an entry whose last component, is one of the directory's
//     components (a symlink can alias the parent but not the last name).
//   - A regular file, device or FIFO repeated is dropped in favour of the
//     later entry. Safe unless the later entry is a directory (which would
//     merge with what the earlier entry had removed) or an entry between
//     could reach the earlier one: a hard link whose target has its last
//     component among its own, or an entry below it (which extraction
//     refuses, as it is no directory).
//   - A whiteout or opaque marker repeated is dropped; safe only when the
//     two entries are adjacent.
//   - Any other repeat (a hard link or symlink followed by a later entry,
//     whose own header changed the inode or was a parent of entries
//     between; a directory replaced by a non-directory) is not safe.
//
// What is not safe makes the layer not streamable; the full pull applies
// every entry. One case remains outside what a single layer can show: an
// entry between that reaches a repeated regular file through a symlink of
// a lower layer; extraction then fails (not a directory) where the table
// may not.

// Entry is what Dedup needs of a tar entry; Name and, for hard links,
// Linkname are cleaned (CleanName).
type Entry struct {
	Name     string
	Type     byte
	Linkname string
}

// Action is what a file table does with an entry Dedup has seen.
type Action int

const (
	// Append adds the entry to the table.
	Append Action = iota
	// ReplaceEarlier drops the table's earlier entry of the name and
	// appends this one.
	ReplaceEarlier
	// MergeIntoEarlier keeps the earlier (directory) entry in its place,
	// giving it this entry's metadata and the union of both entries'
	// xattrs (this entry's win); this entry is not appended.
	MergeIntoEarlier
)

// Dedup follows the names of one layer's entries in stream order.
type Dedup struct {
	n    int            // entries seen
	last map[string]int // cleaned name -> position of its last entry
	typ  map[string]byte
	// The last position at which a component was seen as:
	dirComp   map[string]int // a non-final component of an entry's name
	baseComp  map[string]int // an entry's last component
	linkComp  map[string]int // a component of a hard link's target
	victimOf  map[string]int // the victim of a whiteout
	unsafeWhy string
}

// NewDedup returns a Dedup for one layer.
func NewDedup() *Dedup {
	return &Dedup{
		last: map[string]int{}, typ: map[string]byte{},
		dirComp: map[string]int{}, baseComp: map[string]int{},
		linkComp: map[string]int{}, victimOf: map[string]int{},
	}
}

// NotSafe returns why the table cannot stand for the layer ("" if it can).
func (d *Dedup) NotSafe() string { return d.unsafeWhy }

// Add records the next entry of the layer and returns what the table
// does with it. Entries Classify calls Root or Meta need not be passed.
func (d *Dedup) Add(e Entry) Action {
	pos := d.n
	d.n++
	act := Append
	if prev, ok := d.last[e.Name]; ok {
		act = d.repeat(e, prev)
		if act == MergeIntoEarlier {
			pos = prev // the table's entry stays where it was
		}
	}
	d.record(e, pos, act)
	return act
}

func (d *Dedup) repeat(e Entry, prev int) Action {
	prevType := d.typ[e.Name]
	isDir := func(t byte) bool { return t == tar.TypeDir }
	comps := strings.Split(e.Name, "/")
	base := comps[len(comps)-1]
	after := func(m map[string]int, keys ...string) bool {
		for _, k := range keys {
			if p, ok := m[k]; ok && p > prev {
				return true
			}
		}
		return false
	}
	n, _ := Classify(e.Name)
	switch {
	case n.Kind == Whiteout || n.Kind == Opaque:
		if prev != d.n-2 {
			d.unsafe("whiteout %q appears twice with entries between", e.Name)
		}
		return ReplaceEarlier
	case isDir(prevType) && isDir(e.Type):
		if after(d.baseComp, comps...) || after(d.victimOf, comps...) {
			d.unsafe("directory %q appears twice and an entry between may replace it", e.Name)
		}
		return MergeIntoEarlier
	case prevType == tar.TypeReg || prevType == tar.TypeRegA || prevType == tar.TypeChar ||
		prevType == tar.TypeBlock || prevType == tar.TypeFifo:
		if isDir(e.Type) {
			// The first entry removed what was at the name (maybe a
			// directory with content, maybe in a lower layer); the
			// later directory alone would merge with it instead.
			d.unsafe("%q appears twice, the second time as a directory", e.Name)
		}
		if after(d.linkComp, base) || after(d.dirComp, base) {
			d.unsafe("%q appears twice and an entry between may refer to the first", e.Name)
		}
		return ReplaceEarlier
	}
	d.unsafe("%q appears twice, first as type %q", e.Name, prevType)
	return ReplaceEarlier
}

func (d *Dedup) unsafe(format string, args ...any) {
	if d.unsafeWhy == "" {
		d.unsafeWhy = fmt.Sprintf(format, args...)
	}
}

func (d *Dedup) record(e Entry, pos int, act Action) {
	now := d.n - 1
	d.last[e.Name] = pos
	d.typ[e.Name] = e.Type
	comps := strings.Split(e.Name, "/")
	for _, c := range comps[:len(comps)-1] {
		d.dirComp[c] = now
	}
	n, _ := Classify(e.Name)
	if n.Kind == Whiteout {
		d.victimOf[n.Victim] = now
	} else if act != MergeIntoEarlier { // the merged entry stands at pos

		d.baseComp[comps[len(comps)-1]] = now
	}
	if e.Type == tar.TypeLink {
		for _, c := range strings.Split(e.Linkname, "/") {
			d.linkComp[c] = now
		}
	}
}
