package events

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
)

// TestEncodeDecodeHistories: every event the decider produces, stored and
// read back, is the envelope Wrap built, and the family loaded from it is
// the state after it.
func TestEncodeDecodeHistories(t *testing.T) {
	for _, h := range histories(t) {
		for i, s := range h.steps {
			data, err := Encode(Wrap(s.e, s.after))
			if err != nil {
				t.Fatal(err)
			}
			env, err := Decode(data, h.familyID)
			if err != nil {
				t.Fatalf("%s #%d: %v\n%s", h.name, i, err, data)
			}
			checkDecoded(t, fmt.Sprintf("%s #%d %s", h.name, i, s.e.Type), s, env)
		}
	}
}

// TestEncodeDecodeClockTimes: events whose times are in another zone or
// carry a monotonic reading (time.Now), folded by Evolve and wrapped
// directly, come back as Wrap made them.
func TestEncodeDecodeClockTimes(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	now := time.Now() // with a monotonic reading
	at := now.In(paris)
	ctx := domain.Context{"ip": "2001:db8::1", "user_agent": histUA}
	evs := []domain.Event{
		{ID: "e1", Type: domain.TokenIssued, Time: at, FamilyID: "fam", Subject: "u", ClientID: "c", Generation: 1,
			TokenHash: domain.HashToken("g1"), Scope: []string{"openid"}, Audience: []string{"https://a.example"},
			IdleExpiresAt: at.Add(time.Hour), AbsoluteExpiresAt: now.Add(2 * time.Hour), Context: ctx},
		{ID: "e2", Type: domain.TokenRotated, Time: now.Add(time.Minute), FamilyID: "fam", Subject: "u", ClientID: "c",
			Generation: 2, TokenHash: domain.HashToken("g2"), Scope: []string{"openid"}, Audience: []string{"https://a.example"},
			IdleExpiresAt: now.Add(time.Minute + time.Hour).In(paris)},
		{ID: "e3", Type: domain.TokenReused, Time: at.Add(time.Minute + time.Second), FamilyID: "fam", Subject: "u",
			ClientID: "c", Generation: 2, TokenHash: domain.HashToken("g1"), Scope: []string{"openid"}, Context: ctx},
		{ID: "e4", Type: domain.FamilyRevoked, Time: now.Add(2 * time.Minute), FamilyID: "fam", Subject: "u", ClientID: "c",
			Generation: 2, Reason: "user_disabled"},
		{ID: "e5", Type: domain.FamilyArchived, Time: at.Add(3 * time.Hour), FamilyID: "fam", Subject: "u", ClientID: "c",
			Generation: 2},
	}
	var f domain.Family
	for _, e := range evs {
		f = domain.Evolve(f, e)
		s := step{e, f}
		data, err := Encode(Wrap(e, f))
		if err != nil {
			t.Fatal(err)
		}
		env, err := Decode(data, "fam")
		if err != nil {
			t.Fatalf("%s: %v", e.Type, err)
		}
		checkDecoded(t, string(e.Type), s, env)
	}
}

// TestEncodeKeepsWhatEvolveWouldNotMake: the stored form leaves a field out
// only when the message says it, so a snapshot that does not follow from
// its event (any field zeroed, or set to something else) still comes back
// as it was.
func TestEncodeKeepsWhatEvolveWouldNotMake(t *testing.T) {
	for _, h := range histories(t) {
		for i, s := range h.steps {
			base := Wrap(s.e, s.after)
			snap := reflect.TypeFor[Snapshot]()
			for j := range snap.NumField() {
				field := snap.Field(j)
				for _, change := range []string{"zero", "other"} {
					env := base
					env.Data.Family.Audience = append([]string{}, base.Data.Family.Audience...)
					v := reflect.ValueOf(&env.Data.Family).Elem().Field(j)
					if change == "other" {
						v.Set(reflect.ValueOf(otherThan(v.Interface(), env.Time)))
					} else {
						v.SetZero()
					}
					data, err := Encode(env)
					if err != nil {
						t.Fatal(err)
					}
					got, err := Decode(data, h.familyID)
					what := fmt.Sprintf("%s #%d %s, %s %s", h.name, i, s.e.Type, change, field.Name)
					if field.Name == "Status" && change == "zero" {
						// An event without a status is not a tokend event.
						if !errors.Is(err, ErrMalformedEvent) {
							t.Errorf("%s: decoded: %v", what, err)
						}
						continue
					}
					if err != nil {
						t.Fatalf("%s: %v\n%s", what, err, data)
					}
					for _, d := range diffs(env, got, false) {
						t.Errorf("%s: %s", what, d)
					}
				}
			}
		}
	}
}

// otherThan returns a value of v's type that differs from v.
func otherThan(v any, at time.Time) any {
	switch v := v.(type) {
	case domain.Status:
		if v == domain.StatusActive {
			return domain.StatusRevoked
		}
		return domain.StatusActive
	case uint64:
		return v + 1
	case string:
		return v + "x"
	case []string:
		return append(v, "https://other.example")
	case time.Time:
		if v.Equal(at) {
			return v.Add(time.Second)
		}
		return at
	}
	panic(fmt.Sprintf("no other value for %T", v))
}

// TestDecodeRefusesMalformedState: the compact form is checked like the
// full one.
func TestDecodeRefusesMalformedState(t *testing.T) {
	const head = `{"id":"x","type":"token.issued","time":"2026-01-01T00:00:00Z","family_id":"f","generation":1,"reason":"",`
	for _, data := range []string{
		head + `"data":{"state":{"status":""}}}`,
		head + `"data":{"state":{"created_at":"yesterday"}}}`,
		head + `"data":{"state":{"audience":"https://a.example"}}}`,
		head + `"data":{"state":[]}}`,
		strings.Replace(head, `"generation":1`, `"generation":0`, 1) + `"data":{"state":{}}}`,
		strings.Replace(head, "token.issued", "token.hacked", 1) + `"data":{"state":{}}}`,
	} {
		if _, err := Decode([]byte(data), "f"); !errors.Is(err, ErrMalformedEvent) {
			t.Errorf("%s: %v", data, err)
		}
	}
	if _, err := Decode([]byte(head+`"data":{"state":{}}}`), "f"); err != nil {
		t.Fatalf("a minimal issued event: %v", err)
	}
}

// TestEncodePresenter: the presenting client and the presented generation
// are stored beside the owner and the family's generation, and only on
// events that have them.
func TestEncodePresenter(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	f := domain.Family{ID: "fam", Subject: "u", ClientID: "web-app", Status: domain.StatusActive, Generation: 2,
		CurrentHash: domain.HashToken("g2"), CreatedAt: at, LastUsedAt: at, IdleExpiresAt: at.Add(time.Hour),
		AbsoluteExpiresAt: at.Add(2 * time.Hour)}
	for _, tc := range []struct {
		e    domain.Event
		want string // a part of the stored form
	}{
		{domain.Event{ID: "e1", Type: domain.RefreshRejected, Reason: domain.ReasonRetiredKey, PresentedBy: "evil-app", PresentedGeneration: 7},
			`"client_id":"web-app","presented_by":"evil-app","generation":2,"presented_generation":7,"reason":"retired_key",`},
		{domain.Event{ID: "e2", Type: domain.ReplayDetected, PresentedGeneration: 1},
			`"client_id":"web-app","generation":2,"presented_generation":1,"reason":"",`},
		{domain.Event{ID: "e3", Type: domain.FamilyRevoked, Reason: domain.ReasonReplayDetected},
			`"client_id":"web-app","generation":2,"reason":"replay_detected",`},
	} {
		e := tc.e
		e.Time, e.FamilyID, e.Subject, e.ClientID, e.Generation, e.TokenHash = at, "fam", "u", "web-app", 2, f.CurrentHash
		for name, encode := range map[string]func(Envelope) ([]byte, error){"compact": Encode, "full": EncodeFull} {
			data, err := encode(Wrap(e, f))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(data), tc.want) {
				t.Errorf("%s %s stored as\n%s\nwant it to hold %s", name, e.Type, data, tc.want)
			}
			env, err := Decode(data, "fam")
			if err != nil {
				t.Fatal(err)
			}
			checkDecoded(t, name+" "+string(e.Type), step{e, f}, env)
			if got := env.Event(); got.PresentedBy != e.PresentedBy || got.PresentedGeneration != e.PresentedGeneration {
				t.Errorf("%s %s: event presented by %q generation %d", name, e.Type, got.PresentedBy, got.PresentedGeneration)
			}
		}
	}
}
