package index

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// formatModules are the only modules outside the standard library that the
// index may import: compression and tar readers, the digest type and the
// eStargz TOC format. Each is a format library with no daemon behind it, so
// the index can still become a module of its own. Adding one here is a
// decision to review, not a side effect of an import.
var formatModules = []string{
	"github.com/containerd/stargz-snapshotter/estargz",
	"github.com/klauspost/compress",
	"github.com/opencontainers/go-digest",
	"github.com/vbatts/tar-split",
}

const self = "github.com/riffle-dev/riffle/internal/index"

// TestDependencies fences internal/index (as go-containerregistry's depcheck
// fences its packages): its code, subpackages included, imports the
// standard library, its own subpackages and formatModules, and nothing else
// of Riffle. It reads the import clauses of every non-test file, so it
// needs no go command; packages of other modules cannot import Riffle's
// internal packages, so direct imports are the whole story.
func TestDependencies(t *testing.T) {
	fset := token.NewFileSet()
	n := 0
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		n++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if !allowedImport(p) {
				t.Errorf("%s imports %s: internal/index may import only the standard library, its own subpackages and %v (see README, Layout)", path, p, formatModules)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no Go files found: the test must run in internal/index")
	}
}

func allowedImport(p string) bool {
	first, _, _ := strings.Cut(p, "/")
	if !strings.Contains(first, ".") {
		return true // the standard library
	}
	if p == self || strings.HasPrefix(p, self+"/") {
		return true
	}
	for _, m := range formatModules {
		if p == m || strings.HasPrefix(p, m+"/") {
			return true
		}
	}
	return false
}
