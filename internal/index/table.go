package index

import (
	"github.com/riffle-dev/riffle/internal/index/ocilayer"
)

// cleanName normalises a tar entry name or hard-link target by the rules
// every Riffle applier shares (ocilayer.CleanName): a leading "/" goes, a
// ".." component is refused.
func cleanName(name string) (string, error) { return ocilayer.CleanName(name) }

// fileTable collects a layer's file table in stream order, keeping one
// entry per name as ocilayer.Dedup decides.
type fileTable struct {
	files   []File
	byName  map[string]int
	dedup   *ocilayer.Dedup
	dropped int
}

func newFileTable() *fileTable {
	return &fileTable{byName: map[string]int{}, dedup: ocilayer.NewDedup()}
}

// add puts f (its Name and hard-link target already cleaned) in the table.
// It reports whether f was appended as the table's last entry; a
// directory repeated as a directory is merged into its earlier entry.
func (t *fileTable) add(f File) (bool, error) {
	n, err := ocilayer.Classify(f.Name)
	if err != nil {
		return false, err
	}
	prev, seen := t.byName[f.Name]
	act := ocilayer.Append
	switch {
	case n.Kind != ocilayer.Root && n.Kind != ocilayer.Meta:
		act = t.dedup.Add(ocilayer.Entry{Name: f.Name, Type: f.Type, Linkname: f.Linkname})
	case seen:
		act = ocilayer.ReplaceEarlier // skipped by appliers; keep the last
	}
	switch act {
	case ocilayer.MergeIntoEarlier:
		mergeDir(&t.files[prev], &f)
		return false, nil
	case ocilayer.ReplaceEarlier:
		t.files[prev].Name = ""
		t.dropped++
	}
	t.byName[f.Name] = len(t.files)
	t.files = append(t.files, f)
	return true, nil
}

// mergeDir applies a later header of a directory to its earlier entry, as
// extraction merges it: the later metadata wins, xattrs accumulate.
func mergeDir(dst, src *File) {
	pax := dst.PAX
	for k, v := range src.PAX {
		if pax == nil {
			pax = map[string]string{}
		}
		pax[k] = v
	}
	name := dst.Name
	*dst = *src
	dst.Name, dst.PAX = name, pax
}

// result returns the table without dropped entries, and why it cannot
// stand for the layer ("" when it can).
func (t *fileTable) result() ([]File, string) {
	files := t.files
	if t.dropped > 0 {
		kept := files[:0]
		for _, f := range files {
			if f.Name != "" {
				kept = append(kept, f)
			}
		}
		files = kept
	}
	return files, t.dedup.NotSafe()
}
