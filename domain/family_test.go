package domain

import (
	"errors"
	"fmt"
	"math/rand"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	famA    = "fam-A"
	famB    = "fam-B"
	subj    = "user-42"
	owner   = "web-app"
	foreign = "evil-app"
)

var (
	t0         = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	testPolicy = Policy{ReuseInterval: 10 * time.Second, IdleTTL: time.Hour, AbsoluteTTL: 5 * time.Hour}
	grantScope = []string{"openid", "api:read", "api:write"}
	grantAud   = []string{"https://api.example.com", "https://billing.example.com"}
	reqCtx     = Context{"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}
)

// sequentialIDs is a deterministic NewEventID: prefix1, prefix2, …
func sequentialIDs(prefix string) func() string {
	n := 0
	return func() string {
		n++
		return prefix + strconv.Itoa(n)
	}
}

// testDecider returns a decider whose clock stands still at now.
func testDecider(p Policy, now time.Time) Decider {
	return Decider{Policy: p, Now: func() time.Time { return now }, NewEventID: sequentialIDs("evt-")}
}

// ev builds an event of family famA owned by owner, carrying reqCtx.
func ev(id string, typ EventType, at time.Time, gen uint64, opts ...func(*Event)) Event {
	e := Event{ID: id, Type: typ, Time: at, FamilyID: famA, Subject: subj, ClientID: owner, Generation: gen, Context: reqCtx}
	for _, o := range opts {
		o(&e)
	}
	return e
}

func withHash(h string) func(*Event)    { return func(e *Event) { e.TokenHash = h } }
func withReason(r string) func(*Event)  { return func(e *Event) { e.Reason = r } }
func withScope(s []string) func(*Event) { return func(e *Event) { e.Scope = s } }
func withAud(a []string) func(*Event)   { return func(e *Event) { e.Audience = a } }
func withIdle(t time.Time) func(*Event) { return func(e *Event) { e.IdleExpiresAt = t } }
func withCtx(c Context) func(*Event)    { return func(e *Event) { e.Context = c } }
func withFamily(id string) func(*Event) { return func(e *Event) { e.FamilyID = id } }
func withSubject(s string) func(*Event) { return func(e *Event) { e.Subject = s } }
func withClient(c string) func(*Event)  { return func(e *Event) { e.ClientID = c } }
func withNoCtx() func(*Event)           { return withCtx(nil) }
func withPresented(gen uint64, by string) func(*Event) {
	return func(e *Event) { e.PresentedGeneration, e.PresentedBy = gen, by }
}
func withIssuedExpiries(at time.Time) func(*Event) {
	return func(e *Event) {
		e.IdleExpiresAt, e.AbsoluteExpiresAt = at.Add(testPolicy.IdleTTL), at.Add(testPolicy.AbsoluteTTL)
	}
}

// issuedAt is a stored token.issued for tok's family.
func issuedAt(at time.Time, tok Token, scope, aud []string) Event {
	return ev("given-1", TokenIssued, at, 1, withFamily(tok.FamilyID), withHash(tok.Hash()),
		withScope(scope), withAud(aud), withIssuedExpiries(at))
}

// rotatedAt is a stored token.rotated to child, handing out the whole grant
// for the first audience.
func rotatedAt(at time.Time, child Token) Event {
	return ev("given-"+strconv.FormatUint(child.Generation, 10), TokenRotated, at, child.Generation,
		withFamily(child.FamilyID), withHash(child.Hash()), withScope(grantScope), withAud(grantAud[:1]),
		withIdle(at.Add(testPolicy.IdleTTL)))
}

func concat(hs ...[]Event) []Event {
	var out []Event
	for _, h := range hs {
		out = append(out, h...)
	}
	return out
}

func types(evs []Event) []EventType {
	out := make([]EventType, len(evs))
	for i, e := range evs {
		out[i] = e.Type
	}
	return out
}

// diffEvents names every field that differs, or returns "".
func diffEvents(got, want []Event) string {
	var b strings.Builder
	if len(got) != len(want) {
		fmt.Fprintf(&b, "got %d events %v, want %d %v\n", len(got), types(got), len(want), types(want))
	}
	for i := 0; i < max(len(got), len(want)); i++ {
		switch {
		case i >= len(got):
			fmt.Fprintf(&b, "event %d: missing, want %+v\n", i, want[i])
			continue
		case i >= len(want):
			fmt.Fprintf(&b, "event %d: unexpected %+v\n", i, got[i])
			continue
		}
		g, w := reflect.ValueOf(got[i]), reflect.ValueOf(want[i])
		for j := 0; j < g.NumField(); j++ {
			if gf, wf := g.Field(j).Interface(), w.Field(j).Interface(); !reflect.DeepEqual(gf, wf) {
				fmt.Fprintf(&b, "event %d (%s) %s: got %#v, want %#v\n", i, want[i].Type, g.Type().Field(j).Name, gf, wf)
			}
		}
	}
	return b.String()
}

func TestDecide(t *testing.T) {
	c := MustCodec(t)
	tok := func(gen uint64) Token { return MustMint(t, c, famA, gen, byte(gen)) }
	tok1, tok2, tok3, tok4, tok5 := tok(1), tok(2), tok(3), tok(4), tok(5)
	tok2bis := MustMint(t, c, famA, 2, 0xed) // a parent-generation token that is not the parent
	tok3bis := MustMint(t, c, famA, 3, 0xee) // same generation as the current token, other secret
	tokB1 := MustMint(t, c, famB, 1, 1)
	tokB4 := MustMint(t, c, famB, 4, 4)

	r2, r3 := t0.Add(10*time.Minute), t0.Add(20*time.Minute) // rotations to generation 2 and 3
	h1 := []Event{issuedAt(t0, tok1, grantScope, grantAud)}
	h2 := concat(h1, []Event{rotatedAt(r2, tok2)})
	h3 := concat(h2, []Event{rotatedAt(r3, tok3)}) // current tok3, parent tok2 rotated at r3, ancestor tok1
	revokedAt := r3.Add(10 * time.Minute)
	absolute := t0.Add(testPolicy.AbsoluteTTL)
	h3revoked := concat(h3, []Event{ev("given-rev", FamilyRevoked, revokedAt, 3, withReason(ReasonRevoked))})
	h3replayed := concat(h3, []Event{
		ev("given-replay", ReplayDetected, revokedAt, 3, withHash(tok1.Hash())),
		ev("given-rev", FamilyRevoked, revokedAt, 3, withReason(ReasonReplayDetected)),
	})
	noAud := []Event{issuedAt(t0, tok1, grantScope, nil)}
	// Rotated every 50 minutes up to generation 6 (at t0+250m): the idle expiry
	// keeps moving (now t0+310m) but the absolute one stays at t0+300m.
	long := []Event{issuedAt(t0, tok1, grantScope, grantAud)}
	for g := uint64(2); g <= 6; g++ {
		long = append(long, rotatedAt(t0.Add(time.Duration(g-1)*50*time.Minute), tok(g)))
	}
	tok6, tok7 := tok(6), tok(7)

	issue := Issue{Token: tok1, Subject: subj, ClientID: owner, Scope: grantScope, Audience: grantAud, Context: reqCtx}
	issueWith := func(mod func(*Issue)) Issue { c := issue; mod(&c); return c }
	refresh := func(p Token, mods ...func(*Refresh)) Refresh {
		r := Refresh{Presented: p, ClientID: owner, Context: reqCtx}
		for _, m := range mods {
			m(&r)
		}
		return r
	}
	child := func(t Token) func(*Refresh) { return func(r *Refresh) { r.Child = t } }
	reusable := func(t Token) func(*Refresh) { return func(r *Refresh) { r.Reusable = t } }
	by := func(client string) func(*Refresh) { return func(r *Refresh) { r.ClientID = client } }
	scope := func(s ...string) func(*Refresh) { return func(r *Refresh) { r.Scope = s } }
	audience := func(a string) func(*Refresh) { return func(r *Refresh) { r.Audience = a } }

	// underKey is a token of famA made under retiredKey retired at retiredAt,
	// as a codec holding that key parses it.
	underKey := func(retiredAt time.Time, gen uint64) Token {
		old := retiredKey
		old.RetiredAt = retiredAt
		t1, err := MustCodec(t, testKey, old).Parse(MustMint(t, MustCodec(t, retiredKey), famA, gen, 0x77).Value())
		if err != nil {
			t.Fatal(err)
		}
		return t1
	}
	leaked1, leaked3 := underKey(t0.Add(-2*time.Minute), 1), underKey(t0.Add(-2*time.Minute), 3)

	ctx17 := Context{}
	for i := range 17 {
		ctx17["k"+strconv.Itoa(i)] = "v"
	}
	badContexts := []Context{ctx17, {"": "x"}, {"ip": strings.Repeat("1", 513)}, {"ua": "a\x01b"}, {strings.Repeat("k", 65): "v"}}
	zero := Policy{ReuseInterval: 0, IdleTTL: testPolicy.IdleTTL, AbsoluteTTL: testPolicy.AbsoluteTTL}
	long256 := strings.Repeat("s", 256)

	// Expected outcomes.
	rejected := func(at time.Time, gen uint64, reason string, presented Token) Event {
		return ev("evt-1", RefreshRejected, at, gen, withReason(reason), withHash(presented.Hash()), withPresented(presented.Generation, ""))
	}
	// mismatch is the refusal of a token presented by another client, which
	// the event names beside the owner.
	mismatch := func(at time.Time, gen uint64, by string, presented Token) Event {
		return ev("evt-1", RefreshRejected, at, gen, withReason(ReasonClientMismatch), withHash(presented.Hash()),
			withPresented(presented.Generation, by))
	}
	replay := func(at time.Time, gen uint64, presented Token) []Event {
		return []Event{
			ev("evt-1", ReplayDetected, at, gen, withHash(presented.Hash()), withPresented(presented.Generation, "")),
			ev("evt-2", FamilyRevoked, at, gen, withReason(ReasonReplayDetected)),
		}
	}
	rotated := func(at time.Time, child Token, scope, aud []string) Event {
		return ev("evt-1", TokenRotated, at, child.Generation, withHash(child.Hash()), withScope(scope), withAud(aud),
			withIdle(at.Add(testPolicy.IdleTTL)))
	}
	reused := func(at time.Time, gen uint64, presented Token, scope, aud []string) Event {
		return ev("evt-1", TokenReused, at, gen, withHash(presented.Hash()), withScope(scope), withAud(aud),
			withPresented(presented.Generation, ""))
	}
	revoked := func(at time.Time, gen uint64, reason string) Event {
		return ev("evt-1", FamilyRevoked, at, gen, withReason(reason))
	}

	type testCase struct {
		name    string
		given   []Event
		at      time.Time
		policy  *Policy // testPolicy when nil
		when    any
		then    []Event
		thenErr string // contract code, "" for success
		thenIs  error  // when set, errors.Is(err, thenIs) must hold
		// thenExpiresAt, when set, is the family's ExpiresAt after the events.
		thenExpiresAt time.Time
	}
	tests := []testCase{
		// issue
		{name: "issue", at: t0, when: issue,
			then:          []Event{ev("evt-1", TokenIssued, t0, 1, withHash(tok1.Hash()), withScope(grantScope), withAud(grantAud), withIssuedExpiries(t0))},
			thenExpiresAt: t0.Add(time.Hour)},
		{name: "issue records UTC times whatever the clock's zone", at: t0.In(time.FixedZone("CET", 3600)), when: issue,
			then: []Event{ev("evt-1", TokenIssued, t0, 1, withHash(tok1.Hash()), withScope(grantScope), withAud(grantAud), withIssuedExpiries(t0))}},
		{name: "issue with an empty grant and no context", at: t0,
			when: issueWith(func(i *Issue) { i.Scope, i.Audience, i.Context = []string{}, nil, nil }),
			then: []Event{ev("evt-1", TokenIssued, t0, 1, withHash(tok1.Hash()), withScope([]string{}), withNoCtx(), withIssuedExpiries(t0))}},
		{name: "issue with 256-byte subject and client_id", at: t0,
			when: issueWith(func(i *Issue) { i.Subject, i.ClientID = long256, long256 }),
			then: []Event{ev("evt-1", TokenIssued, t0, 1, withSubject(long256), withClient(long256), withHash(tok1.Hash()),
				withScope(grantScope), withAud(grantAud), withIssuedExpiries(t0))}},
		{name: "issue with unicode subject", at: t0,
			when: issueWith(func(i *Issue) { i.Subject = "Jürgen Müller 日本" }),
			then: []Event{ev("evt-1", TokenIssued, t0, 1, withSubject("Jürgen Müller 日本"), withHash(tok1.Hash()),
				withScope(grantScope), withAud(grantAud), withIssuedExpiries(t0))}},
		{name: "issue: empty subject", at: t0, when: issueWith(func(i *Issue) { i.Subject = "" }), thenErr: EInvalidRequest},
		{name: "issue: subject too long", at: t0, when: issueWith(func(i *Issue) { i.Subject = long256 + "s" }), thenErr: EInvalidRequest},
		{name: "issue: subject with NUL", at: t0, when: issueWith(func(i *Issue) { i.Subject = "user\x0042" }), thenErr: EInvalidRequest},
		{name: "issue: subject with newline", at: t0, when: issueWith(func(i *Issue) { i.Subject = "user\n42" }), thenErr: EInvalidRequest},
		{name: "issue: subject with DEL", at: t0, when: issueWith(func(i *Issue) { i.Subject = "user\x7f" }), thenErr: EInvalidRequest},
		{name: "issue: subject not UTF-8", at: t0, when: issueWith(func(i *Issue) { i.Subject = "user\xff" }), thenErr: EInvalidRequest},
		{name: "issue: empty client_id", at: t0, when: issueWith(func(i *Issue) { i.ClientID = "" }), thenErr: EInvalidRequest},
		{name: "issue: client_id too long", at: t0, when: issueWith(func(i *Issue) { i.ClientID = long256 + "c" }), thenErr: EInvalidRequest},
		{name: "issue: client_id with tab", at: t0, when: issueWith(func(i *Issue) { i.ClientID = "web\tapp" }), thenErr: EInvalidRequest},
		{name: "issue: client_id with escape", at: t0, when: issueWith(func(i *Issue) { i.ClientID = "web\x1b[2Japp" }), thenErr: EInvalidRequest},
		{name: "issue: family already exists", given: h1, at: r2, when: issueWith(func(i *Issue) { i.Subject = "someone-else" }),
			thenErr: EServerError, thenIs: ErrFamilyExists},
		{name: "issue: family already exists and revoked", given: h3revoked, at: r3, when: issue, thenErr: EServerError, thenIs: ErrFamilyExists},
		{name: "issue: not a generation-1 token", at: t0, when: issueWith(func(i *Issue) { i.Token = tok2 }), thenErr: EServerError},

		// refresh: rotation
		{name: "refresh current token rotates", given: h1, at: r2, when: refresh(tok1, child(tok2)),
			then:          []Event{rotated(r2, tok2, grantScope, grantAud[:1])},
			thenExpiresAt: r2.Add(time.Hour)},
		{name: "refresh current token of generation 3", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4)),
			then:          []Event{rotated(r3.Add(time.Minute), tok4, grantScope, grantAud[:1])},
			thenExpiresAt: r3.Add(time.Minute + time.Hour)},
		{name: "refresh just inside the reuse interval of the previous rotation still rotates the current token",
			given: h3, at: r3.Add(time.Second), when: refresh(tok3, child(tok4)),
			then: []Event{rotated(r3.Add(time.Second), tok4, grantScope, grantAud[:1])}},
		{name: "refresh without context", given: h1, at: r2, when: refresh(tok1, child(tok2), func(r *Refresh) { r.Context = nil }),
			then: []Event{ev("evt-1", TokenRotated, r2, 2, withHash(tok2.Hash()), withScope(grantScope), withAud(grantAud[:1]),
				withIdle(r2.Add(time.Hour)), withNoCtx())}},

		// refresh: ownership before anything else
		{name: "foreign client with the current token", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, by(foreign), child(tok4)),
			then: []Event{mismatch(r3.Add(time.Minute), 3, foreign, tok3)}, thenErr: EInvalidGrant},
		{name: "foreign client with the rotated parent outside the interval", given: h3, at: r3.Add(time.Minute), when: refresh(tok2, by(foreign)),
			then: []Event{mismatch(r3.Add(time.Minute), 3, foreign, tok2)}, thenErr: EInvalidGrant},
		{name: "foreign client with the parent inside the interval", given: h3, at: r3.Add(time.Second), when: refresh(tok2, by(foreign), reusable(tok3)),
			then: []Event{mismatch(r3.Add(time.Second), 3, foreign, tok2)}, thenErr: EInvalidGrant},
		{name: "foreign client with an ancestor", given: h3, at: r3.Add(time.Second), when: refresh(tok1, by(foreign)),
			then: []Event{mismatch(r3.Add(time.Second), 3, foreign, tok1)}, thenErr: EInvalidGrant},
		{name: "foreign client with an unknown token", given: h3, at: r3.Add(time.Minute), when: refresh(tok3bis, by(foreign)),
			then: []Event{mismatch(r3.Add(time.Minute), 3, foreign, tok3bis)}, thenErr: EInvalidGrant},
		{name: "foreign client on a revoked family", given: h3revoked, at: revokedAt.Add(time.Minute), when: refresh(tok3, by(foreign)),
			then: []Event{mismatch(revokedAt.Add(time.Minute), 3, foreign, tok3)}, thenErr: EInvalidGrant},
		{name: "foreign client on an expired family", given: h3, at: r3.Add(2 * time.Hour), when: refresh(tok1, by(foreign)),
			then: []Event{mismatch(r3.Add(2*time.Hour), 3, foreign, tok1)}, thenErr: EInvalidGrant},
		{name: "empty client_id", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, by(""), child(tok4)),
			then: []Event{mismatch(r3.Add(time.Minute), 3, "", tok3)}, thenErr: EInvalidGrant},
		{name: "client_id differing only in case", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, by("Web-App"), child(tok4)),
			then: []Event{mismatch(r3.Add(time.Minute), 3, "Web-App", tok3)}, thenErr: EInvalidGrant},

		// refresh: replay
		{name: "parent at the end of the reuse interval is a replay", given: h3, at: r3.Add(10 * time.Second), when: refresh(tok2, reusable(tok3)),
			then: replay(r3.Add(10*time.Second), 3, tok2), thenErr: EInvalidGrant},
		{name: "parent long after rotation is a replay", given: h3, at: r3.Add(30 * time.Minute), when: refresh(tok2),
			then: replay(r3.Add(30*time.Minute), 3, tok2), thenErr: EInvalidGrant},
		{name: "parent of generation 1 outside the interval is a replay", given: h2, at: r2.Add(time.Minute), when: refresh(tok1),
			then: replay(r2.Add(time.Minute), 2, tok1), thenErr: EInvalidGrant},
		{name: "older ancestor inside the interval is a replay", given: h3, at: r3.Add(time.Second), when: refresh(tok1, reusable(tok3)),
			then: replay(r3.Add(time.Second), 3, tok1), thenErr: EInvalidGrant},
		{name: "older ancestor at the instant of rotation is a replay", given: h3, at: r3, when: refresh(tok1),
			then: replay(r3, 3, tok1), thenErr: EInvalidGrant},
		{name: "reuse interval 0: the parent is a replay at once", given: h3, at: r3, policy: &zero, when: refresh(tok2, reusable(tok3)),
			then: replay(r3, 3, tok2), thenErr: EInvalidGrant},

		// refresh: reuse of the just-rotated parent
		{name: "parent inside the interval is reused", given: h3, at: r3.Add(9 * time.Second), when: refresh(tok2, reusable(tok3)),
			then: []Event{reused(r3.Add(9*time.Second), 3, tok2, grantScope, grantAud[:1])}, thenExpiresAt: r3.Add(time.Hour)},
		{name: "parent at the instant of rotation is reused", given: h3, at: r3, when: refresh(tok2, reusable(tok3)),
			then: []Event{reused(r3, 3, tok2, grantScope, grantAud[:1])}},
		{name: "parent inside the interval with down-scope and second audience", given: h3, at: r3.Add(time.Second),
			when: refresh(tok2, reusable(tok3), scope("api:read"), audience(grantAud[1])),
			then: []Event{reused(r3.Add(time.Second), 3, tok2, []string{"api:read"}, grantAud[1:])}},
		{name: "parent inside the interval with up-scope", given: h3, at: r3.Add(time.Second),
			when: refresh(tok2, reusable(tok3), scope("api:read", "admin")),
			then: []Event{rejected(r3.Add(time.Second), 3, ReasonInvalidScope, tok2)}, thenErr: EInvalidScope},
		{name: "parent inside the interval with unknown audience", given: h3, at: r3.Add(time.Second),
			when: refresh(tok2, reusable(tok3), audience("https://evil.example.com")),
			then: []Event{rejected(r3.Add(time.Second), 3, ReasonInvalidTarget, tok2)}, thenErr: EInvalidTarget},
		{name: "parent inside the interval whose child cannot be derived again", given: h3, at: r3.Add(time.Second), when: refresh(tok2),
			then: []Event{rejected(r3.Add(time.Second), 3, ReasonExpired, tok2)}, thenErr: EInvalidGrant},
		{name: "parent inside the interval with a child that is not current", given: h3, at: r3.Add(time.Second), when: refresh(tok2, reusable(tok3bis)),
			then: []Event{rejected(r3.Add(time.Second), 3, ReasonExpired, tok2)}, thenErr: EInvalidGrant},
		{name: "parent inside the interval with itself as child", given: h3, at: r3.Add(time.Second), when: refresh(tok2, reusable(tok2)),
			then: []Event{rejected(r3.Add(time.Second), 3, ReasonExpired, tok2)}, thenErr: EInvalidGrant},

		// refresh: scope and audience
		{name: "down-scope", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), scope("api:read")),
			then: []Event{rotated(r3.Add(time.Minute), tok4, []string{"api:read"}, grantAud[:1])}},
		{name: "down-scope in another order", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), scope("api:write", "openid")),
			then: []Event{rotated(r3.Add(time.Minute), tok4, []string{"api:write", "openid"}, grantAud[:1])}},
		{name: "the whole grant requested explicitly", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), scope(grantScope...)),
			then: []Event{rotated(r3.Add(time.Minute), tok4, grantScope, grantAud[:1])}},
		{name: "up-scope", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), scope("api:read", "admin")),
			then: []Event{rejected(r3.Add(time.Minute), 3, ReasonInvalidScope, tok3)}, thenErr: EInvalidScope, thenExpiresAt: r3.Add(time.Hour)},
		{name: "scope differing only in case", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), scope("API:READ")),
			then: []Event{rejected(r3.Add(time.Minute), 3, ReasonInvalidScope, tok3)}, thenErr: EInvalidScope},
		{name: "scope is checked before audience", given: h3, at: r3.Add(time.Minute),
			when: refresh(tok3, child(tok4), scope("admin"), audience("https://evil.example.com")),
			then: []Event{rejected(r3.Add(time.Minute), 3, ReasonInvalidScope, tok3)}, thenErr: EInvalidScope},
		{name: "second audience", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), audience(grantAud[1])),
			then: []Event{rotated(r3.Add(time.Minute), tok4, grantScope, grantAud[1:])}},
		{name: "first audience named explicitly", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), audience(grantAud[0])),
			then: []Event{rotated(r3.Add(time.Minute), tok4, grantScope, grantAud[:1])}},
		{name: "unknown audience", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), audience("https://evil.example.com")),
			then: []Event{rejected(r3.Add(time.Minute), 3, ReasonInvalidTarget, tok3)}, thenErr: EInvalidTarget, thenExpiresAt: r3.Add(time.Hour)},
		{name: "audience that is a prefix of a granted one", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), audience("https://api.example")),
			then: []Event{rejected(r3.Add(time.Minute), 3, ReasonInvalidTarget, tok3)}, thenErr: EInvalidTarget},
		{name: "family without audiences rotates without one", given: noAud, at: r2, when: refresh(tok1, child(tok2)),
			then: []Event{rotated(r2, tok2, grantScope, nil)}},
		{name: "family without audiences refuses any audience", given: noAud, at: r2, when: refresh(tok1, child(tok2), audience(grantAud[0])),
			then: []Event{rejected(r2, 1, ReasonInvalidTarget, tok1)}, thenErr: EInvalidTarget},

		// refresh: lifetimes
		{name: "just before idle expiry", given: h1, at: t0.Add(time.Hour - time.Nanosecond), when: refresh(tok1, child(tok2)),
			then: []Event{rotated(t0.Add(time.Hour-time.Nanosecond), tok2, grantScope, grantAud[:1])}},
		{name: "at idle expiry", given: h1, at: t0.Add(time.Hour), when: refresh(tok1, child(tok2)),
			then: []Event{rejected(t0.Add(time.Hour), 1, ReasonExpired, tok1)}, thenErr: EInvalidGrant},
		{name: "after idle expiry of a rotated family", given: h3, at: r3.Add(time.Hour + time.Minute), when: refresh(tok3, child(tok4)),
			then: []Event{rejected(r3.Add(time.Hour+time.Minute), 3, ReasonExpired, tok3)}, thenErr: EInvalidGrant},
		{name: "expiry is checked before replay", given: h3, at: r3.Add(2 * time.Hour), when: refresh(tok1),
			then: []Event{rejected(r3.Add(2*time.Hour), 3, ReasonExpired, tok1)}, thenErr: EInvalidGrant},
		{name: "rotation does not move the absolute expiry", given: long, at: t0.Add(299 * time.Minute), when: refresh(tok6, child(tok7)),
			then:          []Event{rotated(t0.Add(299*time.Minute), tok7, grantScope, grantAud[:1])},
			thenExpiresAt: t0.Add(5 * time.Hour)},
		{name: "absolute expiry although the idle expiry is later", given: long, at: t0.Add(300 * time.Minute), when: refresh(tok6, child(tok7)),
			then: []Event{rejected(t0.Add(300*time.Minute), 6, ReasonExpired, tok6)}, thenErr: EInvalidGrant},

		// refresh: revoked family
		{name: "revoked family, current token", given: h3revoked, at: revokedAt.Add(time.Minute), when: refresh(tok3, child(tok4)),
			then: []Event{rejected(revokedAt.Add(time.Minute), 3, ReasonFamilyRevoked, tok3)}, thenErr: EInvalidGrant},
		{name: "revoked family, ancestor: no second revocation", given: h3revoked, at: revokedAt.Add(time.Minute), when: refresh(tok1),
			then: []Event{rejected(revokedAt.Add(time.Minute), 3, ReasonFamilyRevoked, tok1)}, thenErr: EInvalidGrant},
		{name: "revoked family, parent inside the interval", given: h3revoked, at: r3.Add(time.Second), when: refresh(tok2, reusable(tok3)),
			then: []Event{rejected(r3.Add(time.Second), 3, ReasonFamilyRevoked, tok2)}, thenErr: EInvalidGrant},
		{name: "revoked and expired family", given: h3revoked, at: r3.Add(6 * time.Hour), when: refresh(tok3),
			then: []Event{rejected(r3.Add(6*time.Hour), 3, ReasonFamilyRevoked, tok3)}, thenErr: EInvalidGrant},
		{name: "family revoked by replay, parent again", given: h3replayed, at: revokedAt.Add(time.Minute), when: refresh(tok2),
			then: []Event{rejected(revokedAt.Add(time.Minute), 3, ReasonFamilyRevoked, tok2)}, thenErr: EInvalidGrant},
		{name: "family revoked by replay, current token", given: h3replayed, at: revokedAt.Add(time.Minute), when: refresh(tok3, child(tok4)),
			then: []Event{rejected(revokedAt.Add(time.Minute), 3, ReasonFamilyRevoked, tok3)}, thenErr: EInvalidGrant},

		// refresh: tokens the family never handed out
		{name: "same generation, other secret", given: h3, at: r3.Add(time.Minute), when: refresh(tok3bis, child(tok4)),
			then: []Event{rejected(r3.Add(time.Minute), 3, ReasonUnknownToken, tok3bis)}, thenErr: EInvalidGrant},
		{name: "next generation", given: h3, at: r3.Add(time.Minute), when: refresh(tok4),
			then: []Event{rejected(r3.Add(time.Minute), 3, ReasonUnknownToken, tok4)}, thenErr: EInvalidGrant},
		{name: "generation above current", given: h3, at: r3.Add(time.Minute), when: refresh(tok5),
			then: []Event{rejected(r3.Add(time.Minute), 3, ReasonUnknownToken, tok5)}, thenErr: EInvalidGrant},
		{name: "parent generation, other secret, inside the interval", given: h3, at: r3.Add(time.Second), when: refresh(tok2bis, reusable(tok3)),
			then: []Event{rejected(r3.Add(time.Second), 3, ReasonUnknownToken, tok2bis)}, thenErr: EInvalidGrant},
		{name: "parent generation, other secret, outside the interval", given: h3, at: r3.Add(time.Minute), when: refresh(tok2bis),
			then: []Event{rejected(r3.Add(time.Minute), 3, ReasonUnknownToken, tok2bis)}, thenErr: EInvalidGrant},
		{name: "token of another family", given: h3, at: r3.Add(time.Minute), when: refresh(tokB1), thenErr: EInvalidGrant, thenIs: ErrInvalidGrant},
		{name: "token of another family by a foreign client", given: h3, at: r3.Add(time.Minute), when: refresh(tokB1, by(foreign)),
			thenErr: EInvalidGrant, thenIs: ErrInvalidGrant},
		{name: "no family", at: t0, when: refresh(tok1, child(tok2)), thenErr: EInvalidGrant, thenIs: ErrInvalidGrant},

		// refresh: bad input and caller bugs
		{name: "refresh with invalid context", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), func(r *Refresh) { r.Context = ctx17 }),
			thenErr: EInvalidRequest},
		{name: "rotation without a child", given: h3, at: r3.Add(time.Minute), when: refresh(tok3), thenErr: EServerError},
		{name: "rotation with a child of the wrong generation", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok5)), thenErr: EServerError},
		{name: "rotation with a child of another family", given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tokB4)), thenErr: EServerError},
		{name: "unknown command", given: h3, at: r3, when: "refresh please", thenErr: EServerError},
		{name: "pointer command", given: h3, at: r3, when: &Revoke{}, thenErr: EServerError},
		{name: "nil command", given: h3, at: r3, when: nil, thenErr: EServerError},

		// revoke
		{name: "revoke", given: h3, at: revokedAt, when: Revoke{Context: reqCtx},
			then: []Event{revoked(revokedAt, 3, ReasonRevoked)}},
		{name: "revoke with a reason", given: h3, at: revokedAt, when: Revoke{Reason: "user_disabled", Context: reqCtx},
			then: []Event{revoked(revokedAt, 3, "user_disabled")}},
		{name: "revoke with a 256-byte reason", given: h1, at: t0, when: Revoke{Reason: long256, Context: reqCtx},
			then: []Event{revoked(t0, 1, long256)}},
		{name: "revoke by the current token", given: h3, at: revokedAt, when: Revoke{Token: &tok3, Context: reqCtx},
			then: []Event{revoked(revokedAt, 3, ReasonRevoked)}},
		{name: "revoke by the parent", given: h3, at: revokedAt, when: Revoke{Token: &tok2, Context: reqCtx},
			then: []Event{revoked(revokedAt, 3, ReasonRevoked)}},
		{name: "revoke by an ancestor", given: h3, at: revokedAt, when: Revoke{Token: &tok1, Reason: "logout", Context: reqCtx},
			then: []Event{revoked(revokedAt, 3, "logout")}},
		{name: "revoke by a token never handed out", given: h3, at: revokedAt, when: Revoke{Token: &tok3bis, Context: reqCtx}},
		{name: "revoke by a parent-generation token never handed out", given: h3, at: revokedAt, when: Revoke{Token: &tok2bis, Context: reqCtx}},
		{name: "revoke by a future generation", given: h3, at: revokedAt, when: Revoke{Token: &tok4, Context: reqCtx}},
		{name: "revoke by a token of another family", given: h3, at: revokedAt, when: Revoke{Token: &tokB4, Context: reqCtx}},
		{name: "revoke an already revoked family", given: h3revoked, at: revokedAt.Add(time.Minute), when: Revoke{Reason: "again", Context: reqCtx}},
		{name: "revoke a family revoked by replay", given: h3replayed, at: revokedAt.Add(time.Minute), when: Revoke{Token: &tok3}},
		{name: "revoke an unknown family", at: t0, when: Revoke{Context: reqCtx}},
		{name: "revoke by the owning client", given: h3, at: revokedAt, when: Revoke{Token: &tok3, ClientID: owner, Context: reqCtx},
			then: []Event{revoked(revokedAt, 3, ReasonRevoked)}},
		{name: "revoke by another client revokes nothing", given: h3, at: revokedAt, when: Revoke{Token: &tok3, ClientID: foreign}},
		{name: "revoke by a token of an unknown family", at: t0, when: Revoke{Token: &tok1}},
		{name: "revoke: reason too long", given: h3, at: revokedAt, when: Revoke{Reason: long256 + "r"}, thenErr: EInvalidRequest},
		{name: "revoke: reason with control characters", given: h3, at: revokedAt, when: Revoke{Reason: "bad\nreason"}, thenErr: EInvalidRequest},
		{name: "revoke: reason not UTF-8", given: h3, at: revokedAt, when: Revoke{Reason: "\xc3"}, thenErr: EInvalidRequest},
		{name: "revoke: invalid reason on an unknown family", at: t0, when: Revoke{Reason: "\x00"}, thenErr: EInvalidRequest},

		// the client's response to a replay
		{name: "replay with audit_only records it and refuses, the family lives", given: h3, at: r3.Add(time.Minute),
			when: refresh(tok1, func(r *Refresh) { r.OnReplay = ReplayAuditOnly }),
			then: replay(r3.Add(time.Minute), 3, tok1)[:1], thenErr: EInvalidGrant},
		{name: "replay with revoke_subject revokes this family", given: h3, at: r3.Add(time.Minute),
			when: refresh(tok1, func(r *Refresh) { r.OnReplay = ReplayRevokeSubject }),
			then: replay(r3.Add(time.Minute), 3, tok1), thenErr: EInvalidGrant},

		// tokens under a MAC key retired before the family was created
		{name: "an ancestor under a key retired before the family is refused, not a replay", given: h3, at: r3.Add(time.Minute),
			when: refresh(leaked1), then: []Event{rejected(r3.Add(time.Minute), 3, ReasonRetiredKey, leaked1)}, thenErr: EInvalidGrant},
		{name: "the current generation under such a key is refused", given: h3, at: r3.Add(time.Minute),
			when: refresh(leaked3, child(tok4)), then: []Event{rejected(r3.Add(time.Minute), 3, ReasonRetiredKey, leaked3)}, thenErr: EInvalidGrant},
		{name: "such a token from another client is refused the same way, naming it", given: h3, at: r3.Add(time.Minute),
			when: refresh(leaked1, by(foreign)), thenErr: EInvalidGrant,
			then: []Event{ev("evt-1", RefreshRejected, r3.Add(time.Minute), 3, withReason(ReasonRetiredKey), withHash(leaked1.Hash()), withPresented(1, foreign))}},
		{name: "a key retired within the grace before the family may have minted for it", given: h3, at: r3.Add(time.Minute),
			when: refresh(underKey(t0.Add(-30*time.Second), 1)), then: replay(r3.Add(time.Minute), 3, underKey(t0.Add(-30*time.Second), 1)), thenErr: EInvalidGrant},
		{name: "a key retired after the family was created made its ancestors", given: h3, at: r3.Add(time.Minute),
			when: refresh(underKey(t0.Add(5*time.Minute), 1)), then: replay(r3.Add(time.Minute), 3, underKey(t0.Add(5*time.Minute), 1)), thenErr: EInvalidGrant},
		{name: "revoke with a token under a key retired before the family revokes nothing", given: h3, at: r3.Add(time.Minute),
			when: Revoke{Token: &leaked1}},

		// archive: only past the absolute expiry, once
		{name: "archive before the absolute expiry", given: h3, at: absolute.Add(-time.Second), when: Archive{}},
		{name: "archive at the absolute expiry", given: h3, at: absolute, when: Archive{},
			then: []Event{ev("evt-1", FamilyArchived, absolute, 3, withNoCtx())}},
		{name: "archive a revoked family", given: h3revoked, at: absolute.Add(time.Hour), when: Archive{},
			then: []Event{ev("evt-1", FamilyArchived, absolute.Add(time.Hour), 3, withNoCtx())}},
		{name: "archive twice", given: concat(h3, []Event{ev("given-arch", FamilyArchived, absolute, 3, withNoCtx())}),
			at: absolute.Add(time.Hour), when: Archive{}},
		{name: "archive an unknown family", at: absolute, when: Archive{}},
		{name: "refresh of an archived family is refused as expired",
			given: concat(h3, []Event{ev("given-arch", FamilyArchived, absolute, 3, withNoCtx())}),
			at:    absolute.Add(time.Hour), when: refresh(tok3, child(tok4)),
			then: []Event{rejected(absolute.Add(time.Hour), 3, ReasonExpired, tok3)}, thenErr: EInvalidGrant},
	}
	for i, bad := range badContexts {
		tests = append(tests,
			testCase{name: "issue: invalid context " + strconv.Itoa(i), at: t0, when: issueWith(func(c *Issue) { c.Context = bad }), thenErr: EInvalidRequest},
			testCase{name: "refresh: invalid context " + strconv.Itoa(i), given: h3, at: r3.Add(time.Minute), when: refresh(tok3, child(tok4), func(r *Refresh) { r.Context = bad }), thenErr: EInvalidRequest},
			testCase{name: "revoke: invalid context " + strconv.Itoa(i), given: h3, at: r3, when: Revoke{Context: bad}, thenErr: EInvalidRequest},
		)
	}

	grantMessages := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			policy := testPolicy
			if tc.policy != nil {
				policy = *tc.policy
			}
			before := Fold(tc.given)
			got, err := testDecider(policy, tc.at).Decide(before, tc.when)

			if diff := diffEvents(got, tc.then); diff != "" {
				t.Errorf("events differ:\n%s", diff)
			}
			switch {
			case tc.thenErr == "" && err != nil:
				t.Errorf("error = %v, want none", err)
			case tc.thenErr != "" && err == nil:
				t.Errorf("no error, want %s", tc.thenErr)
			case tc.thenErr != "" && ErrorCode(err) != tc.thenErr:
				t.Errorf("ErrorCode(%v) = %s, want %s", err, ErrorCode(err), tc.thenErr)
			}
			if tc.thenIs != nil && !errors.Is(err, tc.thenIs) {
				t.Errorf("error = %v, want errors.Is %v", err, tc.thenIs)
			}
			if ErrorCode(err) == EInvalidGrant {
				grantMessages[ErrorMessage(err)] = true
				if !errors.Is(err, ErrInvalidGrant) || ErrorMessage(err) != grantDescription {
					t.Errorf("invalid_grant error %v is not ErrInvalidGrant", err)
				}
			}
			if !reflect.DeepEqual(Fold(tc.given), before) {
				t.Errorf("Decide modified the state it was given")
			}

			after := Fold(concat(tc.given, got))
			if _, ok := tc.when.(Refresh); ok && before.Exists() {
				// The grant never grows or shrinks by refreshing, and the absolute expiry never moves.
				if !reflect.DeepEqual(after.Scope, before.Scope) || !reflect.DeepEqual(after.Audience, before.Audience) ||
					after.ClientID != before.ClientID || after.Subject != before.Subject || !after.AbsoluteExpiresAt.Equal(before.AbsoluteExpiresAt) {
					t.Errorf("refresh changed the grant: before %+v, after %+v", before, after)
				}
				// Anything but a rotation leaves the current token current.
				if !reflect.DeepEqual(types(got), []EventType{TokenRotated}) &&
					(after.CurrentHash != before.CurrentHash || after.Generation != before.Generation || after.ParentHash != before.ParentHash) {
					t.Errorf("refresh without rotation moved the chain: before %+v, after %+v", before, after)
				}
			}
			if !tc.thenExpiresAt.IsZero() && !after.ExpiresAt().Equal(tc.thenExpiresAt) {
				t.Errorf("ExpiresAt() after the events = %v, want %v", after.ExpiresAt(), tc.thenExpiresAt)
			}
		})
	}
	if len(grantMessages) != 1 {
		t.Errorf("invalid_grant replies carry %d different messages, want exactly one: %v", len(grantMessages), grantMessages)
	}
}

func TestErrorCode(t *testing.T) {
	tests := []struct {
		err           error
		code, message string
	}{
		{ErrInvalidGrant, EInvalidGrant, grantDescription},
		{fmt.Errorf("loading family: %w", ErrInvalidGrant), EInvalidGrant, grantDescription},
		{Errorf(EInvalidScope, "requested %s", "admin"), EInvalidScope, "requested admin"},
		{&Error{Code: EUnavailable, Message: "busy", RetryAfterMs: 50}, EUnavailable, "busy"},
		{ErrFamilyExists, EServerError, "internal error"},
		{errors.New("boom"), EServerError, "internal error"},
	}
	for _, tc := range tests {
		if got := ErrorCode(tc.err); got != tc.code {
			t.Errorf("ErrorCode(%v) = %s, want %s", tc.err, got, tc.code)
		}
		if got := ErrorMessage(tc.err); got != tc.message {
			t.Errorf("ErrorMessage(%v) = %q, want %q", tc.err, got, tc.message)
		}
	}
	if got := ErrInvalidGrant.Error(); got != "invalid_grant: refresh token is not valid" {
		t.Errorf("ErrInvalidGrant.Error() = %q", got)
	}
}

func TestEvolve(t *testing.T) {
	c := MustCodec(t)
	tok1, tok2, tok3 := MustMint(t, c, famA, 1, 1), MustMint(t, c, famA, 2, 2), MustMint(t, c, famA, 3, 3)
	r2, r3 := t0.Add(10*time.Minute), t0.Add(20*time.Minute)
	h1 := []Event{issuedAt(t0, tok1, grantScope, grantAud)}
	h2 := concat(h1, []Event{rotatedAt(r2, tok2)})
	gen1 := Family{ID: famA, Subject: subj, ClientID: owner, Scope: grantScope, Audience: grantAud, Status: StatusActive,
		Generation: 1, CurrentHash: tok1.Hash(), CreatedAt: t0, LastUsedAt: t0,
		IdleExpiresAt: t0.Add(time.Hour), AbsoluteExpiresAt: t0.Add(5 * time.Hour)}
	gen2 := gen1
	gen2.Generation, gen2.CurrentHash, gen2.ParentHash = 2, tok2.Hash(), tok1.Hash()
	gen2.RotatedAt, gen2.LastUsedAt, gen2.IdleExpiresAt = r2, r2, r2.Add(time.Hour)
	gen3 := gen2
	gen3.Generation, gen3.CurrentHash, gen3.ParentHash = 3, tok3.Hash(), tok2.Hash()
	gen3.RotatedAt, gen3.LastUsedAt, gen3.IdleExpiresAt = r3, r3, r3.Add(time.Hour)
	revokedGen2 := gen2
	revokedGen2.Status, revokedGen2.RevokedAt, revokedGen2.RevokedReason = StatusRevoked, r3, "user_disabled"

	tests := []struct {
		name  string
		given []Event
		when  Event
		then  Family
	}{
		{"issued", nil, h1[0], gen1},
		{"rotated", h1, rotatedAt(r2, tok2), gen2},
		{"rotated twice", h2, rotatedAt(r3, tok3), gen3},
		{"rotated with a down-scope keeps the grant", h2,
			ev("x", TokenRotated, r3, 3, withHash(tok3.Hash()), withScope([]string{"api:read"}), withAud(grantAud[1:]), withIdle(r3.Add(time.Hour))), gen3},
		{"reused changes nothing", h2, ev("x", TokenReused, r2.Add(time.Second), 2, withHash(tok1.Hash()), withScope(grantScope), withAud(grantAud[:1])), gen2},
		{"rejected changes nothing", h2, ev("x", RefreshRejected, r3, 2, withReason(ReasonExpired), withHash(tok1.Hash())), gen2},
		{"replay detected alone changes nothing", h2, ev("x", ReplayDetected, r3, 2, withHash(tok1.Hash())), gen2},
		{"revoked", h2, ev("x", FamilyRevoked, r3, 2, withReason("user_disabled")), revokedGen2},
		{"revoked twice keeps the newer record", concat(h2, []Event{ev("x", FamilyRevoked, r2, 2, withReason("first"))}),
			ev("y", FamilyRevoked, r3, 2, withReason("user_disabled")), revokedGen2},
		{"archived", h2, ev("x", FamilyArchived, r3, 2), func() Family { f := gen2; f.ArchivedAt = r3; return f }()},
		{"unknown type changes nothing", h2, ev("x", EventType("token.frobbed"), r3, 9, withHash(tok3.Hash())), gen2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Evolve(Fold(tc.given), tc.when)
			if !reflect.DeepEqual(got, tc.then) {
				t.Errorf("Evolve =\n %+v\nwant\n %+v", got, tc.then)
			}
			if all := Fold(concat(tc.given, []Event{tc.when})); !reflect.DeepEqual(all, got) {
				t.Errorf("Fold(given+when) = %+v, want %+v", all, got)
			}
		})
	}
	if f := Fold(nil); f.Exists() || !reflect.DeepEqual(f, Family{}) {
		t.Errorf("Fold(nil) = %+v, want the zero family", f)
	}
}

func TestFamilyExpiryAndStatus(t *testing.T) {
	idleFirst := Family{Status: StatusActive, IdleExpiresAt: t0.Add(time.Hour), AbsoluteExpiresAt: t0.Add(2 * time.Hour)}
	absFirst := Family{Status: StatusActive, IdleExpiresAt: t0.Add(3 * time.Hour), AbsoluteExpiresAt: t0.Add(2 * time.Hour)}
	revoked := idleFirst
	revoked.Status = StatusRevoked
	tests := []struct {
		name        string
		f           Family
		at          time.Time
		wantExpires time.Time
		wantStatus  Status
	}{
		{"idle first, before", idleFirst, t0.Add(time.Hour - 1), t0.Add(time.Hour), StatusActive},
		{"idle first, at", idleFirst, t0.Add(time.Hour), t0.Add(time.Hour), StatusExpired},
		{"absolute first, before", absFirst, t0.Add(2*time.Hour - 1), t0.Add(2 * time.Hour), StatusActive},
		{"absolute first, at", absFirst, t0.Add(2 * time.Hour), t0.Add(2 * time.Hour), StatusExpired},
		{"revoked stays revoked after expiry", revoked, t0.Add(10 * time.Hour), t0.Add(time.Hour), StatusRevoked},
		{"revoked before expiry", revoked, t0, t0.Add(time.Hour), StatusRevoked},
		{"no family", Family{}, t0, time.Time{}, ""},
	}
	for _, tc := range tests {
		if got := tc.f.ExpiresAt(); !got.Equal(tc.wantExpires) {
			t.Errorf("%s: ExpiresAt = %v, want %v", tc.name, got, tc.wantExpires)
		}
		if got := tc.f.StatusAt(tc.at); got != tc.wantStatus {
			t.Errorf("%s: StatusAt = %q, want %q", tc.name, got, tc.wantStatus)
		}
	}
}

func TestHandedOut(t *testing.T) {
	c := MustCodec(t)
	tok := func(gen uint64) Token { return MustMint(t, c, famA, gen, byte(gen)) }
	f := Fold([]Event{issuedAt(t0, tok(1), grantScope, grantAud), rotatedAt(t0.Add(time.Minute), tok(2)),
		rotatedAt(t0.Add(2*time.Minute), tok(3)), rotatedAt(t0.Add(3*time.Minute), tok(4))})
	tests := []struct {
		name string
		f    Family
		tok  Token
		want bool
	}{
		{"current", f, tok(4), true},
		{"parent", f, tok(3), true},
		{"ancestor", f, tok(2), true},
		{"first", f, tok(1), true},
		{"current generation, other secret", f, MustMint(t, c, famA, 4, 0xee), false},
		{"parent generation, other secret", f, MustMint(t, c, famA, 3, 0xee), false},
		{"next generation", f, tok(5), false},
		{"other family", f, MustMint(t, c, famB, 4, 4), false},
		{"no family", Family{}, tok(1), false},
	}
	for _, tc := range tests {
		if got := tc.f.HandedOut(tc.tok); got != tc.want {
			t.Errorf("%s: HandedOut = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// The same respelling as in TestParseRejectsNonCanonicalMAC, fed to the
// decider: a replayed parent must revoke the family, however it is spelled.
func TestDecideNonCanonicalParentIsReplay(t *testing.T) {
	c := MustCodec(t)
	tok1, tok2 := MustMint(t, c, famA, 1, 1), MustMint(t, c, famA, 2, 2)
	f := Fold([]Event{issuedAt(t0, tok1, grantScope, grantAud), rotatedAt(t0.Add(time.Minute), tok2)})
	respelled := replacePart(tok1.Value(), 5, nonCanonical(t, strings.Split(tok1.Value(), ".")[5]))
	p, err := c.Parse(respelled)
	if err != nil {
		return // refused at parse: nothing reaches the decider
	}
	evs, _ := testDecider(testPolicy, t0.Add(30*time.Minute)).Decide(f, Refresh{Presented: p, ClientID: owner})
	if len(evs) != 2 || evs[0].Type != ReplayDetected || evs[1].Type != FamilyRevoked {
		t.Fatalf("rotated parent, respelled, presented outside the reuse interval: got %v, want [token.replay_detected family.revoked]", types(evs))
	}
}

// simFamily is one family driven by random commands.
type simFamily struct {
	id     string
	stored []Event // everything Decide returned, in order
	state  Family  // evolved one event at a time
	tokens []Token // handed out, oldest first: tokens[g-1] is generation g
}

type simStats struct {
	types   map[EventType]int
	reasons map[string]int
}

func TestDecideRandomSequences(t *testing.T) {
	c := MustCodec(t)
	stats := simStats{types: map[EventType]int{}, reasons: map[string]int{}}
	for seed := int64(1); seed <= 30; seed++ {
		t.Run("seed="+strconv.FormatInt(seed, 10), func(t *testing.T) {
			simulate(t, c, seed, 400, stats)
		})
	}
	// A generator that never reaches an outcome proves nothing about it.
	for _, typ := range []EventType{TokenIssued, TokenRotated, TokenReused, ReplayDetected, FamilyRevoked, RefreshRejected} {
		if stats.types[typ] == 0 {
			t.Errorf("no %s in any run", typ)
		}
	}
	for _, r := range []string{ReasonClientMismatch, ReasonExpired, ReasonFamilyRevoked, ReasonInvalidScope, ReasonInvalidTarget, ReasonUnknownToken, ReasonReplayDetected, "user_disabled"} {
		if stats.reasons[r] == 0 {
			t.Errorf("no event with reason %s in any run", r)
		}
	}
	t.Logf("events: %v; reasons: %v", stats.types, stats.reasons)
}

func simulate(t *testing.T, c *TokenCodec, seed int64, steps int, stats simStats) {
	rng := rand.New(rand.NewSource(seed))
	now := t0
	d := Decider{Policy: testPolicy, Now: func() time.Time { return now }, NewEventID: sequentialIDs("e")}
	secret := func() (s [SecretSize]byte) {
		for i := range s {
			s[i] = byte(rng.Intn(256))
		}
		return s
	}
	var all []*simFamily
	newFamily := func() *simFamily {
		f := &simFamily{id: "f" + strconv.Itoa(len(all))}
		all = append(all, f)
		return f
	}
	slots := []*simFamily{newFamily(), newFamily(), newFamily()}
	ids := map[string]bool{}

	for step := range steps {
		now = now.Add(randomDelay(rng))
		i := rng.Intn(len(slots))
		if f := slots[i].state; f.Exists() && f.StatusAt(now) != StatusActive && rng.Intn(3) == 0 {
			slots[i] = newFamily() // keep some families alive for the run
		}
		sf := slots[i]
		cmd := randomCommand(rng, c, sf, all, secret)
		before := sf.state
		evs, err := d.Decide(before, cmd)
		checkStep(t, step, sf, before, cmd, evs, err, now)
		for _, e := range evs {
			if ids[e.ID] {
				t.Fatalf("step %d: event id %s used twice", step, e.ID)
			}
			ids[e.ID] = true
			stats.types[e.Type]++
			if e.Reason != "" {
				stats.reasons[e.Reason]++
			}
			sf.state = Evolve(sf.state, e)
			sf.stored = append(sf.stored, e)
			switch e.Type {
			case TokenIssued:
				sf.tokens = append(sf.tokens, cmd.(Issue).Token)
			case TokenRotated:
				sf.tokens = append(sf.tokens, cmd.(Refresh).Child)
			}
		}
		checkCurrent(t, step, c, d.Policy, sf, now)
	}
	for _, sf := range all {
		if got := Fold(sf.stored); !reflect.DeepEqual(got, sf.state) {
			t.Errorf("family %s: Fold(stored events) = %+v, want %+v (evolved step by step)", sf.id, got, sf.state)
		}
		checkHistory(t, sf)
	}
}

func randomDelay(rng *rand.Rand) time.Duration {
	switch r := rng.Intn(100); {
	case r < 45:
		return time.Duration(rng.Intn(3)) * time.Second // inside the reuse interval
	case r < 80:
		return time.Duration(3+rng.Intn(13)) * time.Second // around its end
	case r < 95:
		return time.Duration(20+rng.Intn(280)) * time.Second
	default:
		return time.Duration(30+rng.Intn(40)) * time.Minute // around the idle TTL
	}
}

func randomCommand(rng *rand.Rand, c *TokenCodec, sf *simFamily, all []*simFamily, secret func() [SecretSize]byte) any {
	f := sf.state
	if !f.Exists() {
		if rng.Intn(5) > 0 {
			return Issue{Token: c.Mint(sf.id, 1, secret()), Subject: "sub-" + sf.id, ClientID: owner, Scope: grantScope, Audience: grantAud, Context: reqCtx}
		}
		return Refresh{Presented: c.Mint(sf.id, 1, secret()), ClientID: owner}
	}
	switch r := rng.Intn(100); {
	case r < 2:
		return Issue{Token: c.Mint(sf.id, 1, secret()), Subject: "again", ClientID: owner}
	case r < 6:
		rv := Revoke{Reason: []string{"", "user_disabled", "logout"}[rng.Intn(3)], Context: reqCtx}
		if rng.Intn(2) == 0 {
			tok := randomPresented(rng, c, sf, all, secret)
			rv.Token = &tok
		}
		return rv
	}
	p := randomPresented(rng, c, sf, all, secret)
	cmd := Refresh{Presented: p, ClientID: owner, Context: reqCtx}
	if rng.Intn(12) == 0 {
		cmd.ClientID = foreign
	}
	switch r := rng.Intn(10); {
	case r < 2:
		cmd.Scope = []string{}
		for _, s := range f.Scope {
			if rng.Intn(2) == 0 {
				cmd.Scope = append(cmd.Scope, s)
			}
		}
	case r == 2:
		cmd.Scope = []string{f.Scope[rng.Intn(len(f.Scope))], "admin"}
	}
	switch r := rng.Intn(10); {
	case r < 3:
		cmd.Audience = f.Audience[rng.Intn(len(f.Audience))]
	case r == 3:
		cmd.Audience = "https://evil.example.com"
	}
	// As the writer does: a child only for the current generation, the
	// re-derived child (unless its key is gone) only for the parent generation.
	if p.FamilyID == f.ID && p.Generation == f.Generation {
		cmd.Child = c.Mint(f.ID, f.Generation+1, secret())
	}
	if p.FamilyID == f.ID && p.Generation+1 == f.Generation && rng.Intn(5) > 0 {
		cmd.Reusable = sf.tokens[len(sf.tokens)-1]
	}
	return cmd
}

func randomPresented(rng *rand.Rand, c *TokenCodec, sf *simFamily, all []*simFamily, secret func() [SecretSize]byte) Token {
	n := len(sf.tokens)
	switch r := rng.Intn(100); {
	case r < 55:
		return sf.tokens[n-1] // current
	case r < 80 && n >= 2:
		return sf.tokens[n-2] // parent
	case r < 88 && n >= 3:
		return sf.tokens[rng.Intn(n-2)] // older ancestor
	case r < 95:
		return c.Mint(sf.id, uint64(n+rng.Intn(2)), secret()) // never handed out
	default:
		other := all[rng.Intn(len(all))]
		if len(other.tokens) > 0 {
			return other.tokens[rng.Intn(len(other.tokens))]
		}
		return c.Mint(other.id, 1, secret())
	}
}

// checkStep checks one decision against the invariants.
func checkStep(t *testing.T, step int, sf *simFamily, before Family, cmd any, evs []Event, err error, now time.Time) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("step %d, family %s, %T %+v:\n%s\nevents %v, error %v", step, sf.id, cmd, cmd, fmt.Sprintf(format, args...), types(evs), err)
	}
	if ErrorCode(err) == EInvalidGrant && (ErrorMessage(err) != grantDescription || !errors.Is(err, ErrInvalidGrant)) {
		fail("invalid_grant with another message: %q", ErrorMessage(err))
	}
	for i, e := range evs {
		if !e.Time.Equal(now) || e.Time.Location() != time.UTC {
			fail("event %d at %v, want %v UTC", i, e.Time, now)
		}
		if e.FamilyID != sf.id {
			fail("event %d of family %q", i, e.FamilyID)
		}
		if before.Exists() && (e.Subject != before.Subject || e.ClientID != before.ClientID) {
			fail("event %d names subject %q client %q, the family's are %q %q", i, e.Subject, e.ClientID, before.Subject, before.ClientID)
		}
		switch e.Type {
		case TokenIssued:
			if e.Generation != 1 || before.Exists() {
				fail("issued generation %d on existing=%v", e.Generation, before.Exists())
			}
		case TokenRotated:
			if e.Generation != before.Generation+1 {
				fail("rotated to generation %d from %d", e.Generation, before.Generation)
			}
		default:
			if e.Generation != before.Generation {
				fail("%s carries generation %d, current is %d", e.Type, e.Generation, before.Generation)
			}
		}
		if before.Status == StatusRevoked && e.Type != RefreshRejected {
			fail("%s after family.revoked", e.Type)
		}
		if e.Type == FamilyRevoked && e.Reason == ReasonReplayDetected && (i != 1 || evs[0].Type != ReplayDetected) {
			fail("family.revoked(replay_detected) without token.replay_detected before it")
		}
		if e.Type == ReplayDetected && (i != 0 || len(evs) != 2 || evs[1].Type != FamilyRevoked || evs[1].Reason != ReasonReplayDetected) {
			fail("token.replay_detected not followed by family.revoked(replay_detected)")
		}
	}

	switch c := cmd.(type) {
	case Issue:
		if before.Exists() && (len(evs) != 0 || !errors.Is(err, ErrFamilyExists)) {
			fail("issue on an existing family")
		}
		if !before.Exists() && (err != nil || !reflect.DeepEqual(types(evs), []EventType{TokenIssued})) {
			fail("issue of a new family")
		}
	case Revoke:
		if err != nil || len(evs) > 1 || (len(evs) == 1 && (evs[0].Type != FamilyRevoked || before.Status != StatusActive)) {
			fail("revoke")
		}
		if len(evs) == 1 && c.Token != nil && !before.HandedOut(*c.Token) {
			fail("revoked by a token the family never handed out")
		}
	case Refresh:
		ours := before.Exists() && c.Presented.FamilyID == before.ID
		if !ours {
			if len(evs) != 0 || err != ErrInvalidGrant {
				fail("refresh with a token of no known family")
			}
			return
		}
		if len(evs) == 0 {
			fail("a refresh of an existing family must be recorded")
		}
		if c.ClientID != before.ClientID && (len(evs) != 1 || evs[0].Type != RefreshRejected || evs[0].Reason != ReasonClientMismatch) {
			fail("foreign client not refused as client_mismatch")
		}
		if (err == nil) != (len(evs) == 1 && (evs[0].Type == TokenRotated || evs[0].Type == TokenReused)) {
			fail("success must be exactly one rotation or reuse")
		}
		for _, e := range evs {
			switch e.Type {
			case TokenRotated, TokenReused:
				if !Subset(e.Scope, before.Scope) || len(e.Audience) > 1 || !Subset(e.Audience, before.Audience) {
					fail("handed out scope %v audience %v beyond the grant", e.Scope, e.Audience)
				}
				if before.StatusAt(now) != StatusActive {
					fail("%s on a family that is %s", e.Type, before.StatusAt(now))
				}
			}
			switch e.Type {
			case TokenRotated:
				if c.Presented.Hash() != before.CurrentHash || e.TokenHash != c.Child.Hash() {
					fail("rotated from a token that is not current, or to another child")
				}
			case TokenReused:
				if e.TokenHash != before.ParentHash || c.Reusable.Hash() != before.CurrentHash || !now.Before(before.RotatedAt.Add(testPolicy.ReuseInterval)) {
					fail("reused outside the parent's interval")
				}
			case ReplayDetected:
				if !before.HandedOut(c.Presented) || c.Presented.Hash() == before.CurrentHash {
					fail("replay of a token that is current or never handed out")
				}
			}
		}
	}
}

// checkCurrent checks that exactly one handed-out token rotates while the
// family is active, none otherwise, and that it is the newest one.
func checkCurrent(t *testing.T, step int, c *TokenCodec, p Policy, sf *simFamily, now time.Time) {
	t.Helper()
	f := sf.state
	if !f.Exists() {
		if len(sf.tokens) != 0 {
			t.Fatalf("step %d: family %s not issued but handed out %d tokens", step, sf.id, len(sf.tokens))
		}
		return
	}
	if uint64(len(sf.tokens)) != f.Generation {
		t.Fatalf("step %d: family %s handed out %d tokens at generation %d", step, sf.id, len(sf.tokens), f.Generation)
	}
	probe := Decider{Policy: p, Now: func() time.Time { return now }, NewEventID: func() string { return "probe" }}
	current := -1
	for i, tok := range sf.tokens {
		evs, err := probe.Decide(f, Refresh{Presented: tok, ClientID: f.ClientID, Child: c.Mint(f.ID, f.Generation+1, [SecretSize]byte{})})
		if err == nil && len(evs) == 1 && evs[0].Type == TokenRotated {
			if current >= 0 {
				t.Fatalf("step %d: family %s has two current tokens: generations %d and %d", step, sf.id, current+1, i+1)
			}
			current = i
		}
	}
	want := -1
	if f.StatusAt(now) == StatusActive {
		want = len(sf.tokens) - 1
	}
	if current != want {
		t.Fatalf("step %d: family %s (%s): current token is index %d, want %d", step, sf.id, f.StatusAt(now), current, want)
	}
}

// checkHistory checks a family's stored events: issued first, generations
// 1, 2, 3, … without gaps, nothing but refresh.rejected after family.revoked.
func checkHistory(t *testing.T, sf *simFamily) {
	t.Helper()
	if len(sf.stored) == 0 {
		return
	}
	if e := sf.stored[0]; e.Type != TokenIssued || e.Generation != 1 {
		t.Errorf("family %s starts with %s generation %d", sf.id, e.Type, e.Generation)
	}
	gen, revoked := uint64(1), false
	for i, e := range sf.stored[1:] {
		if revoked && e.Type != RefreshRejected {
			t.Errorf("family %s event %d: %s after family.revoked", sf.id, i+1, e.Type)
		}
		switch e.Type {
		case TokenIssued:
			t.Errorf("family %s event %d: issued twice", sf.id, i+1)
		case TokenRotated:
			gen++
		case FamilyRevoked:
			revoked = true
		}
		if e.Generation != gen {
			t.Errorf("family %s event %d: %s generation %d, want %d", sf.id, i+1, e.Type, e.Generation, gen)
		}
	}
}

// TestDecideReadsTheClockOnce: a decision happens at one instant. With a
// clock that jumps an hour at every reading, a second reading would put a
// check and an event, or two events of one decision, at different times.
func TestDecideReadsTheClockOnce(t *testing.T) {
	c := MustCodec(t)
	tok1, tok2, tok3 := MustMint(t, c, famA, 1, 1), MustMint(t, c, famA, 2, 2), MustMint(t, c, famA, 3, 3)
	r2 := t0.Add(10 * time.Minute)
	h2 := []Event{issuedAt(t0, tok1, grantScope, grantAud), rotatedAt(r2, tok2)}
	cases := []struct {
		name  string
		given []Event
		at    time.Time
		when  any
	}{
		{"issue", nil, t0, Issue{Token: tok1, Subject: subj, ClientID: owner}},
		{"rotation", h2, r2.Add(time.Minute), Refresh{Presented: tok2, ClientID: owner, Child: tok3}},
		{"reuse", h2, r2.Add(time.Second), Refresh{Presented: tok1, ClientID: owner, Reusable: tok2}},
		{"replay", h2, r2.Add(time.Minute), Refresh{Presented: tok1, ClientID: owner}},
		{"rejection", h2, r2.Add(time.Minute), Refresh{Presented: tok2, ClientID: foreign}},
		{"revoke", h2, r2.Add(time.Minute), Revoke{}},
		{"archive", h2, t0.Add(testPolicy.AbsoluteTTL), Archive{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			reads := 0
			d := Decider{Policy: testPolicy, NewEventID: sequentialIDs("evt-"), Now: func() time.Time {
				reads++
				return tc.at.Add(time.Duration(reads-1) * time.Hour)
			}}
			got, _ := d.Decide(Fold(tc.given), tc.when)
			if reads != 1 {
				t.Errorf("the decision read the clock %d times, want once", reads)
			}
			if len(got) == 0 {
				t.Fatal("no events: the case no longer exercises a decision")
			}
			for _, e := range got {
				if !e.Time.Equal(tc.at) {
					t.Errorf("%s at %v, want %v", e.Type, e.Time, tc.at)
				}
			}
		})
	}
}
