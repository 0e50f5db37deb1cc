package projections

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestReadModelImportsNoTransport: the read model answers in its own types
// and speaks no transport (DESIGN.md, layout): of tokend's packages it
// imports only domain, events and queries; api maps its answers to the wire.
func TestReadModelImportsNoTransport(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{"domain": true, "events": true, "queries": true}
	const module = "github.com/tokend/tokend/"
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if pkg, ok := strings.CutPrefix(path, module); ok && !allowed[pkg] {
				t.Errorf("%s imports %s", name, path)
			}
		}
	}
}
