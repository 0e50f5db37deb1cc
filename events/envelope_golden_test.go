package events

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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

// unpresented is env as versions before presented_by and
// presented_generation built it: everything else is the same.
func unpresented(env Envelope) Envelope {
	env.PresentedBy, env.PresentedGeneration = "", 0
	return env
}

// presentedFields matches the two top-level fields of an event that name
// the presenter, as Encode and EncodeFull write them.
var presentedFields = regexp.MustCompile(`,"presented_by":"[^"]*"|,"presented_generation":[0-9]+`)

// TestDecodeStoredV1: events stored with the full family snapshot
// (data.family, as tokend wrote them up to 0.2) stay readable: each decodes
// to the envelope Wrap built then (without the presenter, which was not
// stored yet), and the writer loads the same family from it.
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
			checkDecodedAs(t, fmt.Sprintf("%s #%d %s", h.name, i, s.e.Type), unpresented(Wrap(s.e, s.after)), s.after, env)
		}
	}
}

// TestEncodeFullIsStoredV1: the form for rolling upgrades is byte for byte
// what versions before data.state wrote, so they read it, except for
// presented_by and presented_generation where an event has them: two
// top-level fields that those versions, like any reader of tokend's
// events, skip as unknown.
func TestEncodeFullIsStoredV1(t *testing.T) {
	for _, h := range histories(t) {
		lines := goldenLines(t, "stored-v1", h.name)
		for i, s := range h.steps {
			what := fmt.Sprintf("%s #%d %s", h.name, i, s.e.Type)
			env := Wrap(s.e, s.after)
			old, err := EncodeFull(unpresented(env))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(old, lines[i]) {
				t.Errorf("%s without the presenter: stored as\n%s\nwant\n%s", what, old, lines[i])
			}
			data, err := EncodeFull(env)
			if err != nil {
				t.Fatal(err)
			}
			if rest := presentedFields.ReplaceAll(data, nil); !bytes.Equal(rest, lines[i]) {
				t.Errorf("%s: stored as\n%s\nwhich is not the old form plus the presenter:\n%s", what, data, lines[i])
			}
			if got, err := Decode(data, h.familyID); err != nil || got.PresentedBy != s.e.PresentedBy ||
				got.PresentedGeneration != s.e.PresentedGeneration {
				t.Errorf("%s: decoded presenter %q generation %d (%v), want %q %d", what, got.PresentedBy,
					got.PresentedGeneration, err, s.e.PresentedBy, s.e.PresentedGeneration)
			}
		}
	}
}

// TestStoredV2: events stored in the compact form before the presenter was
// (testdata/stored-v2) decode to the envelope Wrap built then, and an event
// without a presenter is still stored byte for byte so. Streams keep
// events for months: whatever Encode becomes, stored-v2 must stay readable.
func TestStoredV2(t *testing.T) {
	for _, h := range histories(t) {
		lines := goldenLines(t, "stored-v2", h.name)
		if len(lines) != len(h.steps) {
			t.Fatalf("%s: %d stored events, %d decided", h.name, len(lines), len(h.steps))
		}
		for i, s := range h.steps {
			what := fmt.Sprintf("%s #%d %s", h.name, i, s.e.Type)
			want := unpresented(Wrap(s.e, s.after))
			data, err := Encode(want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data, lines[i]) {
				t.Errorf("%s without the presenter: stored as\n%s\nwant\n%s", what, data, lines[i])
			}
			env, err := Decode(lines[i], h.familyID)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			checkDecodedAs(t, what, want, s.after, env)
		}
	}
}

// TestEncodeStoredV3: the stored form is the compact one with the
// presenter, kept in testdata/stored-v3, and events stored in it decode to
// the envelope Wrap built. A change to Encode that fails this must still
// read what stored-v3 holds.
func TestEncodeStoredV3(t *testing.T) {
	presented := 0
	for _, h := range histories(t) {
		lines := goldenLines(t, "stored-v3", h.name)
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
			if bytes.Contains(lines[i], []byte(`"presented_by":`)) {
				presented++
			}
		}
	}
	if presented == 0 {
		t.Error("no stored event names a foreign presenter: the histories lost their client_mismatch")
	}
}
