package pii

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
)

func testDataKey(t testing.TB, ref string) DataKey {
	t.Helper()
	secret := make([]byte, 32)
	rand.Read(secret)
	k, err := dataKey(ref, 1, secret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSealOpen(t *testing.T) {
	key := testDataKey(t, "abc")
	plain := []byte(`{"subject":"alice","context":{"ip":"192.0.2.1"}}`)
	s, err := Seal(key, "ev1", "fam1", plain)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(s)
	if bytes.Contains(raw, []byte("alice")) || bytes.Contains(raw, []byte("192.0.2.1")) {
		t.Fatalf("sealed part holds the clear value: %s", raw)
	}
	var back Sealed
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	got, err := Open(key, "ev1", "fam1", back)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("open: %q, %v", got, err)
	}

	sameRef := testDataKey(t, "abc") // same ref, other secret
	tampered := back
	tampered.C = bytes.Clone(back.C)
	tampered.C[0] ^= 1
	for name, open := range map[string]func() ([]byte, error){
		"other event id":  func() ([]byte, error) { return Open(key, "ev2", "fam1", back) },
		"other family id": func() ([]byte, error) { return Open(key, "ev1", "fam2", back) },
		"fields shifted":  func() ([]byte, error) { return Open(key, "ev1f", "am1", back) },
		"other key":       func() ([]byte, error) { return Open(testDataKey(t, "xyz"), "ev1", "fam1", back) },
		"other key, ref":  func() ([]byte, error) { return Open(sameRef, "ev1", "fam1", back) },
		"altered":         func() ([]byte, error) { return Open(key, "ev1", "fam1", tampered) },
		"short nonce":     func() ([]byte, error) { return Open(key, "ev1", "fam1", Sealed{V: 1, K: "abc.1", N: []byte{1}}) },
		"unknown version": func() ([]byte, error) { return Open(key, "ev1", "fam1", Sealed{V: 2, K: back.K, N: back.N, C: back.C}) },
	} {
		if got, err := open(); err == nil {
			t.Errorf("%s: opened %q", name, got)
		} else if name != "unknown version" && !errors.Is(err, ErrOpen) {
			t.Errorf("%s: %v; want ErrOpen", name, err)
		}
	}
}

// FuzzOpen: whatever a stored event holds, opening it fails or succeeds,
// never panics.
func FuzzOpen(f *testing.F) {
	key := testDataKey(f, "abc")
	s, _ := Seal(key, "ev1", "fam1", []byte("x"))
	good, _ := json.Marshal(s)
	f.Add(good, "ev1", "fam1")
	f.Add([]byte(`{"v":1,"k":"abc.1","n":"","c":""}`), "", "")
	f.Add([]byte(`{"v":1,"k":"abc.1","n":"AAAAAAAAAAAAAAAA","c":"AA=="}`), "e", "f")
	f.Fuzz(func(t *testing.T, raw []byte, eventID, familyID string) {
		var s Sealed
		if json.Unmarshal(raw, &s) != nil {
			return
		}
		Open(key, eventID, familyID, s)
	})
}

// TestSealedText: a sealed part survives its stored form, as does one
// without a key; what is not that form is refused with ErrOpen.
func TestSealedText(t *testing.T) {
	key := testDataKey(t, "abc.7")
	s, err := Seal(key, "ev1", "fam1", []byte(`{"subject":"alice"}`))
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseSealed(s.Text())
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := Open(key, "ev1", "fam1", back); err != nil || string(plain) != `{"subject":"alice"}` {
		t.Fatalf("open after the round trip: %q, %v", plain, err)
	}
	if none, err := ParseSealed(Sealed{V: SealedVersion}.Text()); err != nil || none.K != "" || none.Text() != "1" {
		t.Fatalf("a part without a key: %+v, %v", none, err)
	}
	for _, bad := range []string{"", "2", "1.", "1..abc.7", "1.@@@.abc.7", "1.AAAA.abc.7", "x.AAAA.k", "1." + s.Text()[2:20]} {
		if _, err := ParseSealed(bad); !errors.Is(err, ErrOpen) {
			t.Errorf("ParseSealed(%q): %v, want ErrOpen", bad, err)
		}
	}
}

// FuzzParseSealed: any stored text parses or is refused without a panic,
// and what parses has one stored form.
func FuzzParseSealed(f *testing.F) {
	key := testDataKey(f, "abc.7")
	s, _ := Seal(key, "ev1", "fam1", []byte("x"))
	f.Add(s.Text())
	f.Add("1")
	f.Add("1.AAAAAAAAAAAAAAAA.t:17.3")
	f.Fuzz(func(t *testing.T, text string) {
		p, err := ParseSealed(text)
		if err != nil {
			return
		}
		again, err := ParseSealed(p.Text())
		if err != nil || again.Text() != p.Text() {
			t.Fatalf("%q parsed to %+v, whose text %q does not parse back (%v)", text, p, p.Text(), err)
		}
		Open(key, "ev1", "fam1", p) // must not panic
	})
}
