package events

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
)

// step is one event as the writer stores it: the event and the family's
// state after it.
type step struct {
	e     domain.Event
	after domain.Family
}

// history is one family's events, decided by the real decider.
type history struct {
	name     string
	familyID string
	steps    []step
}

const (
	histOwner   = "web-app"
	histSubject = "user-42"
)

// histUA is a realistic 100-byte user agent.
const histUA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.3"

// familyRun drives one family through the real decider with a clock the
// test moves, recording every event with the state after it.
type familyRun struct {
	tb    testing.TB
	codec *domain.TokenCodec
	d     domain.Decider
	now   time.Time
	f     domain.Family
	h     history
	ids   int
}

func newFamilyRun(tb testing.TB, name, familyID string, policy domain.Policy, start time.Time) *familyRun {
	tb.Helper()
	codec, err := domain.NewTokenCodec(domain.MACKey{ID: "k1", Secret: []byte("0123456789abcdef0123456789abcdef")})
	if err != nil {
		tb.Fatal(err)
	}
	r := &familyRun{tb: tb, codec: codec, now: start, h: history{name: name, familyID: familyID}}
	r.d = domain.Decider{Policy: policy, Now: func() time.Time { return r.now },
		NewEventID: func() string {
			// 16 bytes, as in production: name, padding, a counter.
			r.ids++
			id := [16]byte{15: byte(r.ids)}
			copy(id[:], name)
			return domain.NewID(id[:])
		}}
	return r
}

// decide runs cmd and records its events; it fails the test if there are
// none, since every step of a history must store something.
func (r *familyRun) decide(cmd any) {
	r.tb.Helper()
	evs, err := r.d.Decide(r.f, cmd)
	if len(evs) == 0 {
		r.tb.Fatalf("%s: %T decided nothing: %v", r.h.name, cmd, err)
	}
	for _, e := range evs {
		r.f = domain.Evolve(r.f, e)
		r.h.steps = append(r.h.steps, step{e, r.f})
	}
}

func (r *familyRun) issue(secret byte, scope, audience []string, ctx domain.Context) domain.Token {
	r.tb.Helper()
	tok := r.codec.Mint(r.h.familyID, 1, [domain.SecretSize]byte{secret})
	r.decide(domain.Issue{Token: tok, Subject: histSubject, ClientID: histOwner, Scope: scope, Audience: audience, Context: ctx})
	return tok
}

// refresh presents tok as client, the way the API builds the command: a
// child of the next generation and the current token derived again from tok.
func (r *familyRun) refresh(tok domain.Token, client string, scope []string, audience string, ctx domain.Context, onReplay domain.ReplayAction) domain.Token {
	r.tb.Helper()
	child, err := r.codec.MintChild(tok)
	if err != nil {
		r.tb.Fatal(err)
	}
	reusable, _ := r.codec.ChildOf(tok, r.f.CurrentHash)
	r.decide(domain.Refresh{Presented: tok, ClientID: client, Scope: scope, Audience: audience, Context: ctx,
		Child: child, Reusable: reusable, OnReplay: onReplay})
	return child
}

// histories are realistic family lives: every event type, every rejection
// reason, with and without audience, scope and context, on clocks in UTC,
// in a zone west of UTC, and in the local zone. They are deterministic, so
// stored forms of them can be kept as golden files.
func histories(tb testing.TB) []history {
	tb.Helper()
	policy := domain.Policy{ReuseInterval: 10 * time.Second, IdleTTL: 336 * time.Hour, AbsoluteTTL: 720 * time.Hour}
	ctx := domain.Context{"ip": "203.0.113.7", "user_agent": histUA}
	scope := []string{"openid", "profile", "api:read", "api:write"}
	auds := []string{"https://api.example.com", "https://billing.example.com"}

	// Two audiences, a scope, a context; every rejection reason; a reuse, a
	// down-scoped rotation, a replay that revokes, an archive.
	full := newFamilyRun(tb, "full", "Yx3kq0vVdM1oI7qf2nE8Tw", policy, time.Date(2026, 12, 1, 10, 0, 0, 123_000_000, time.UTC))
	g1 := full.issue(1, scope, auds, ctx)
	full.now = full.now.Add(5 * time.Minute)
	g2 := full.refresh(g1, histOwner, nil, "", ctx, "")
	full.now = full.now.Add(2 * time.Second)
	full.refresh(g1, histOwner, nil, "", ctx, "") // a lost reply's retry: token.reused
	full.now = full.now.Add(time.Hour)
	g3 := full.refresh(g2, histOwner, []string{"api:read"}, auds[1], ctx, "")
	full.refresh(g3, "evil-app", nil, "", ctx, "")
	full.refresh(g3, histOwner, []string{"admin"}, "", ctx, "")
	full.refresh(g3, histOwner, nil, "https://evil.example.com", ctx, "")
	full.refresh(full.codec.Mint(full.h.familyID, 3, [domain.SecretSize]byte{9}), histOwner, nil, "", ctx, "")
	full.now = full.now.Add(time.Minute)
	full.refresh(g2, histOwner, nil, "", domain.Context{"ip": "198.51.100.9"}, "") // replay + revoke
	full.refresh(g3, histOwner, nil, "", ctx, "")
	full.now = full.f.AbsoluteExpiresAt.Add(time.Minute)
	full.decide(domain.Archive{})

	// No audience (as the API passes it: empty, not nil), no scope, no
	// context, nanosecond times west of UTC; a replay only audited, an
	// expiry, a revoke with a reason.
	west := time.FixedZone("", -7*3600)
	bare := newFamilyRun(tb, "bare", "bare-family-0001", policy, time.Date(2026, 6, 30, 23, 30, 0, 987_654_321, west))
	b1 := bare.issue(2, []string{}, []string{}, nil)
	bare.now = bare.now.Add(time.Hour)
	b2 := bare.refresh(b1, histOwner, nil, "", nil, "")
	bare.now = bare.now.Add(time.Hour)
	b3 := bare.refresh(b2, histOwner, nil, "", nil, "")
	bare.refresh(b1, histOwner, nil, "", nil, domain.ReplayAuditOnly)
	bare.now = bare.f.IdleExpiresAt
	bare.refresh(b3, histOwner, nil, "", nil, "")
	bare.decide(domain.Revoke{Reason: "user_disabled"})
	bare.now = bare.f.AbsoluteExpiresAt
	bare.decide(domain.Archive{})

	// One audience, the local zone (whatever it is here), a reuse refused
	// because the child cannot be derived again, a revoke without a reason.
	one := newFamilyRun(tb, "one", "one-audience", policy, time.Unix(1_790_000_000, 5).In(time.Local))
	o1 := one.issue(3, []string{"api:read"}, auds[:1], domain.Context{"user_agent": "curl/8.5.0"})
	one.now = one.now.Add(time.Millisecond)
	o2 := one.refresh(o1, histOwner, nil, "", nil, "")
	one.now = one.now.Add(time.Second)
	child, _ := one.codec.MintChild(o1)
	one.decide(domain.Refresh{Presented: o1, ClientID: histOwner, Child: child}) // no Reusable: rejected, expired
	one.refresh(o2, histOwner, nil, "", ctx, "")
	one.decide(domain.Revoke{Context: ctx})
	one.now = one.f.AbsoluteExpiresAt.Add(time.Hour)
	one.decide(domain.Archive{})

	return []history{full.h, bare.h, one.h}
}

// diffs lists where got differs from want, field by field. Empty and nil
// slices and maps are the same (JSON does not tell them apart); times are
// compared exactly, location included, unless byInstant.
func diffs(want, got any, byInstant bool) []string {
	var out []string
	timeType := reflect.TypeFor[time.Time]()
	var walk func(path string, w, g reflect.Value)
	walk = func(path string, w, g reflect.Value) {
		switch {
		case w.Kind() == reflect.Struct && w.Type() != timeType:
			for i := range w.NumField() {
				if !w.Type().Field(i).IsExported() { // bookkeeping, not stored
					continue
				}
				walk(path+"."+w.Type().Field(i).Name, w.Field(i), g.Field(i))
			}
		case w.Kind() == reflect.Pointer && !w.IsNil() && !g.IsNil():
			walk(path, w.Elem(), g.Elem())
		case (w.Kind() == reflect.Slice || w.Kind() == reflect.Map) && w.Len() == 0 && g.Len() == 0:
		case w.Type() == timeType && byInstant:
			if !w.Interface().(time.Time).Equal(g.Interface().(time.Time)) {
				out = append(out, fmt.Sprintf("%s: want %v, got %v", path, w, g))
			}
		case !reflect.DeepEqual(w.Interface(), g.Interface()):
			out = append(out, fmt.Sprintf("%s: want %#v, got %#v", path, w, g))
		}
	}
	walk(reflect.TypeOf(want).Name(), reflect.ValueOf(want), reflect.ValueOf(got))
	return out
}

// checkDecoded fails unless env, decoded from a stored s, is what Wrap
// builds from it and its Family is the state after s.
func checkDecoded(t *testing.T, what string, s step, env Envelope) {
	t.Helper()
	checkDecodedAs(t, what, Wrap(s.e, s.after), s.after, env)
}

// checkDecodedAs fails unless env is want and its Family is after.
func checkDecodedAs(t *testing.T, what string, want Envelope, after domain.Family, env Envelope) {
	t.Helper()
	for _, d := range diffs(want, env, false) {
		t.Errorf("%s: %s", what, d)
	}
	for _, d := range diffs(after, env.Family(), true) {
		t.Errorf("%s: %s", what, d)
	}
}
