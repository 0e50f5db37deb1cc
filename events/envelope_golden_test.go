package events

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// goldenLines returns the stored events of a history kept in testdata/form,
// one message a line.
func goldenLines(t *testing.T, form, name string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", form, name+".jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
}

// TestDecodeStoredV1: events stored with the full family snapshot
// (data.family, as tokend wrote them up to 0.2) stay readable: each decodes
// to the envelope Wrap built, and the writer loads the same family from it.
func TestDecodeStoredV1(t *testing.T) {
	for _, h := range histories(t) {
		lines := goldenLines(t, "stored-v1", h.name)
		if len(lines) != len(h.steps) {
			t.Fatalf("%s: %d stored events, %d decided", h.name, len(lines), len(h.steps))
		}
		for i, s := range h.steps {
			env, err := Decode(lines[i], h.familyID)
			if err != nil {
				t.Fatalf("%s #%d: %v", h.name, i, err)
			}
			checkDecoded(t, fmt.Sprintf("%s #%d %s", h.name, i, s.e.Type), s, env)
		}
	}
}
