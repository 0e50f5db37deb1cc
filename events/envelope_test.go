package events

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
)

// FuzzDecodeEvent: a message on an event subject, whatever a misconfigured
// or hostile publisher put there, decodes into an event of that family or
// fails with ErrMalformedEvent; nothing panics, and what decodes is stored
// again (in the compact form) and read back as the same envelope.
func FuzzDecodeEvent(f *testing.F) {
	at := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	fam := domain.Family{ID: "fam", Subject: "u", ClientID: "c", Scope: []string{"openid"}, Status: domain.StatusActive,
		Generation: 1, CurrentHash: domain.HashToken("t"), CreatedAt: at, LastUsedAt: at,
		IdleExpiresAt: at.Add(time.Hour), AbsoluteExpiresAt: at.Add(2 * time.Hour)}
	issued := domain.Event{ID: "e1", Type: domain.TokenIssued, Time: at, FamilyID: "fam", Subject: "u", ClientID: "c",
		Generation: 1, TokenHash: fam.CurrentHash, Scope: fam.Scope, IdleExpiresAt: fam.IdleExpiresAt,
		AbsoluteExpiresAt: fam.AbsoluteExpiresAt, Context: domain.Context{"ip": "203.0.113.7"}}
	old, _ := json.Marshal(Wrap(issued, fam)) // the full snapshot, as stored before the compact form
	compact, _ := Encode(Wrap(issued, fam))
	for _, good := range [][]byte{old, compact} {
		f.Add(good, "fam")
		f.Add(good, "other")
	}
	for _, h := range histories(f) {
		for _, form := range []string{"stored-v1", "stored-v2", "stored-v3"} {
			for _, line := range goldenLines(f, form, h.name) {
				f.Add(line, h.familyID)
			}
		}
	}
	for _, seed := range []string{`{}`, `null`, `[]`, `{"type":"token.issued","refresh_token":"secret"}`,
		`{"id":"x","type":"token.issued","family_id":"fam","generation":1,"data":{"family":{"status":"active"}}}`,
		`{"id":"x","type":"token.bogus","family_id":"fam","generation":1,"data":{"family":{"status":"active"}}}`,
		`{"id":"x","type":"token.rotated","time":"2026-01-01T10:00:00+01:00","family_id":"fam","generation":2,"data":{"state":{"rotated_at":"2026-01-01T09:00:00Z"}}}`,
		`{"id":"x","type":"family.revoked","family_id":"fam","generation":1,"data":{"state":{"status":"active","audience":[]}}}`,
		`{"time":"not a time"}`, "\xff\xfe"} {
		f.Add([]byte(seed), "fam")
	}
	f.Fuzz(func(t *testing.T, data []byte, familyID string) {
		env, err := Decode(data, familyID)
		if err != nil {
			if !errors.Is(err, ErrMalformedEvent) {
				t.Fatalf("error %v is not ErrMalformedEvent", err)
			}
			return
		}
		if env.FamilyID != familyID || env.ID == "" || env.Generation == 0 {
			t.Fatalf("accepted an event of another family or without id: %+v", env)
		}
		// Readers that skip events by PeekType never skip one of another
		// type than Decode reads.
		if typ, ok := PeekType(data); ok && typ != env.Type {
			t.Fatalf("PeekType %q, Decode %q", typ, env.Type)
		}
		again, err := Encode(env)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Decode(again, familyID)
		if err != nil {
			t.Fatalf("re-encoded event refused: %v\n%s", err, again)
		}
		// Times compare as instants: JSON keeps a time's offset, not its
		// *time.Location (a +00:00 read in a UTC zone comes back as Z).
		for _, d := range diffs(env, back, true) {
			t.Errorf("round trip changed %s\n%s", d, again)
		}
	})
}

// rotatedEnvelope is a typical stored rotation: two audiences, a context
// with a browser's user agent, and the family snapshot every event carries.
func rotatedEnvelope() Envelope {
	at := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	auds := []string{"https://api.example.com", "https://billing.example.com"}
	fam := domain.Family{ID: "Yx3kq0vVdM1oI7qf2nE8Tw", Subject: "user-42", ClientID: "web-app",
		Scope: []string{"openid", "profile", "api:read"}, Audience: auds, Status: domain.StatusActive, Generation: 7,
		CurrentHash: domain.HashToken("child"), ParentHash: domain.HashToken("parent"), RotatedAt: at,
		CreatedAt: at.Add(-time.Hour), LastUsedAt: at, IdleExpiresAt: at.Add(24 * time.Hour),
		AbsoluteExpiresAt: at.Add(30 * 24 * time.Hour)}
	rotated := domain.Event{ID: "b3kq0vVdM1oI7qf2nE8TwA", Type: domain.TokenRotated, Time: at, FamilyID: fam.ID,
		Subject: fam.Subject, ClientID: fam.ClientID, Generation: 7, TokenHash: fam.CurrentHash,
		Scope: []string{"api:read"}, Audience: auds[:1], IdleExpiresAt: fam.IdleExpiresAt,
		Context: domain.Context{"ip": "203.0.113.7", "user_agent": histUA}}
	return Wrap(rotated, fam)
}

// BenchmarkEncode and BenchmarkDecode measure the stored form of one
// rotation: the writer encodes it, the projector and the writer's loads
// decode it. B/event is its size in the stream.
//
//	go test -run '^$' -bench 'Encode|Decode' -benchmem ./events
func BenchmarkEncode(b *testing.B) {
	env := rotatedEnvelope()
	var data []byte
	for b.Loop() {
		var err error
		if data, err = Encode(env); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data)), "B/event")
}

func BenchmarkDecode(b *testing.B) {
	env := rotatedEnvelope()
	data, err := Encode(env)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Decode(data, env.FamilyID); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(data)), "B/event")
}

// TestEncodeKeepsMarkupAsIs: a user agent full of < > & is stored as sent,
// one byte each, and decodes back to the same event.
func TestEncodeKeepsMarkupAsIs(t *testing.T) {
	at := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	ua := "Mozilla/5.0 <script>a&&b</script>"
	fam := domain.Family{ID: "fam", Subject: "u", ClientID: "c", Status: domain.StatusActive, Generation: 1, CreatedAt: at}
	e := domain.Event{ID: "e1", Type: domain.FamilyRevoked, Time: at, FamilyID: "fam", Subject: "u", ClientID: "c",
		Generation: 1, Context: domain.Context{"user_agent": ua}}
	data, err := Encode(Wrap(e, fam))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), ua) || strings.Contains(string(data), `\u003c`) || strings.HasSuffix(string(data), "\n") {
		t.Fatalf("stored form escapes markup or ends in a newline: %s", data)
	}
	env, err := Decode(data, "fam")
	if err != nil || env.Context["user_agent"] != ua {
		t.Fatalf("round trip: %v %+v", err, env.Context)
	}
}

// PeekType reads the type of what Encode writes, of every stored form, and
// declines what it cannot read before a nested value.
func TestPeekType(t *testing.T) {
	for _, h := range histories(t) {
		for _, form := range []string{"stored-v1", "stored-v2", "stored-v3"} {
			for _, line := range goldenLines(t, form, h.name) {
				env, err := Decode(line, h.familyID)
				if err != nil {
					t.Fatal(err)
				}
				if typ, ok := PeekType(line); !ok || typ != env.Type {
					t.Errorf("%s %s: PeekType %q %v, want %q", form, h.name, typ, ok, env.Type)
				}
				again, _ := Encode(env)
				if typ, ok := PeekType(again); !ok || typ != env.Type {
					t.Errorf("encoded %s: PeekType %q %v", env.Type, typ, ok)
				}
			}
		}
	}
	for _, declined := range []string{``, `null`, `[]`, `{}`, `{"id":"x"}`, `{"data":{"type":"token.rotated"},"type":"family.revoked"}`,
		`{"type":7}`, `{"id":"x","type":`, "\xff"} {
		if typ, ok := PeekType([]byte(declined)); ok {
			t.Errorf("%q: PeekType %q", declined, typ)
		}
	}
}
