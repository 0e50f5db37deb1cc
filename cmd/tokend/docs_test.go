package main

import (
	"flag"
	"io"
	"os"
	"strings"
	"testing"
)

// TestDocsNameEveryFlag: the README's configuration table and the
// protocol reference list every flag tokend has, so neither falls behind
// the code.
func TestDocsNameEveryFlag(t *testing.T) {
	for _, doc := range []string{"../../README.md", "../../docs/protocol.md"} {
		text, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		declareFlags(&Config{}, io.Discard).VisitAll(func(f *flag.Flag) {
			if !strings.Contains(string(text), "`--"+f.Name+"`") {
				t.Errorf("%s does not document --%s", doc, f.Name)
			}
		})
	}
}
