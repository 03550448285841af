package scheduler_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// storeWrites are the calls whose error is lost state when dropped.
var storeWrites = map[string]bool{
	"SetTaskState": true, "SetJobState": true, "AddTaskEvent": true, "AddJobEvent": true,
	"UpdateTask": true, "UpdateJob": true, "FinishStop": true,
	"MarkTaskDone": true, "MarkJobDone": true,
}

// parsePackage parses the package's non-test files.
func parsePackage(t *testing.T) (*token.FileSet, map[string]*ast.File) {
	t.Helper()
	fset := token.NewFileSet()
	paths, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]*ast.File{}
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files[p] = f
	}
	return fset, files
}

func calledName(e ast.Expr) string {
	c, ok := e.(*ast.CallExpr)
	if !ok {
		return ""
	}
	if s, ok := c.Fun.(*ast.SelectorExpr); ok {
		return s.Sel.Name
	}
	return ""
}

// TestStoreWritesAreChecked: no store write or log marker has its error
// dropped (`_ = st.AddTaskEvent(...)`, or a bare call): each is handled
// or logged once, by the helpers in events.go.
func TestStoreWritesAreChecked(t *testing.T) {
	fset, files := parsePackage(t)
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.AssignStmt:
				for _, l := range n.Lhs {
					if id, ok := l.(*ast.Ident); !ok || id.Name != "_" {
						return true
					}
				}
				for _, r := range n.Rhs {
					if name := calledName(r); storeWrites[name] {
						t.Errorf("%s: the result of %s is dropped", fset.Position(n.Pos()), name)
					}
				}
			case *ast.ExprStmt:
				if name := calledName(n.X); storeWrites[name] {
					t.Errorf("%s: the error of %s is not checked", fset.Position(n.Pos()), name)
				}
			}
			return true
		})
	}
}

// TestEventsHaveOneBuilder: events are recorded only through events.go,
// where each type has one builder, so an event's wording has one owner.
func TestEventsHaveOneBuilder(t *testing.T) {
	fset, files := parsePackage(t)
	for path, f := range files {
		if path == "events.go" {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if name := calledName(func() ast.Expr { e, _ := n.(ast.Expr); return e }()); name == "AddTaskEvent" || name == "AddJobEvent" {
				t.Errorf("%s: %s called outside events.go; add a builder there", fset.Position(n.Pos()), name)
			}
			return true
		})
	}
}
