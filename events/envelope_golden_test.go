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
func goldenLines(tb testing.TB, form, name string) [][]byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", form, name+".jsonl"))
	if err != nil {
		tb.Fatal(err)
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

// TestEncodeFullIsStoredV1: the form for rolling upgrades is byte for byte
// what versions before data.state wrote, so they read it.
func TestEncodeFullIsStoredV1(t *testing.T) {
	for _, h := range histories(t) {
		lines := goldenLines(t, "stored-v1", h.name)
		for i, s := range h.steps {
			data, err := EncodeFull(Wrap(s.e, s.after))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data, lines[i]) {
				t.Errorf("%s #%d %s: stored as\n%s\nwant\n%s", h.name, i, s.e.Type, data, lines[i])
			}
		}
	}
}

// TestEncodeStoredV2: the stored form is the compact one kept in
// testdata/stored-v2, and events stored in it decode to the envelope Wrap
// built. A change to Encode that fails this must still read what stored-v2
// holds: streams keep events for months.
func TestEncodeStoredV2(t *testing.T) {
	for _, h := range histories(t) {
		lines := goldenLines(t, "stored-v2", h.name)
		if len(lines) != len(h.steps) {
			t.Fatalf("%s: %d stored events, %d decided", h.name, len(lines), len(h.steps))
		}
		for i, s := range h.steps {
			what := fmt.Sprintf("%s #%d %s", h.name, i, s.e.Type)
			data, err := Encode(Wrap(s.e, s.after))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data, lines[i]) {
				t.Errorf("%s: stored as\n%s\nwant\n%s", what, data, lines[i])
			}
			env, err := Decode(lines[i], h.familyID)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			checkDecoded(t, what, s, env)
		}
	}
}
