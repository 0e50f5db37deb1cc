package domain

import (
	"testing"
	"time"
)

// TestDecideRecover: a caller that lost a refresh's reply (Refresh.Recover)
// gets the child inside the reuse interval as anyone does; outside it the
// parent ends the family as a lost rotation, not a replay; an older
// ancestor is a replay whatever the caller says; another client's
// presentation never ends the owner's family (invariant 5).
func TestDecideRecover(t *testing.T) {
	c := MustCodec(t)
	tok := func(gen uint64) Token { return MustMint(t, c, famA, gen, byte(gen)) }
	tok1, tok2, tok3, tok4 := tok(1), tok(2), tok(3), tok(4)
	r2, r3 := t0.Add(10*time.Minute), t0.Add(20*time.Minute)
	h3 := []Event{issuedAt(t0, tok1, grantScope, grantAud), rotatedAt(r2, tok2), rotatedAt(r3, tok3)}
	inside, outside := r3.Add(time.Second), r3.Add(testPolicy.ReuseInterval)
	recovering := func(p Token, mod func(*Refresh)) Refresh {
		r := Refresh{Presented: p, ClientID: owner, Context: reqCtx, Recover: true}
		mod(&r)
		return r
	}
	none := func(*Refresh) {}
	tests := []struct {
		name    string
		at      time.Time
		when    Refresh
		then    []Event
		thenErr string
	}{
		{name: "the parent inside the interval: the same child", at: inside, when: recovering(tok2, func(r *Refresh) { r.Reusable = tok3 }),
			then: []Event{ev("evt-1", TokenReused, inside, 3, withHash(tok2.Hash()), withScope(grantScope), withAud(grantAud[:1]), withPresented(2, ""))}},
		{name: "the parent outside the interval: a lost rotation ends the family", at: outside, when: recovering(tok2, none),
			then: []Event{
				ev("evt-1", RefreshRejected, outside, 3, withReason(ReasonLostRotation), withHash(tok2.Hash()), withPresented(2, "")),
				ev("evt-2", FamilyRevoked, outside, 3, withReason(ReasonLostRotation)),
			},
			thenErr: EInvalidGrant},
		{name: "another client saying recover is a client mismatch, never a lost rotation", at: outside,
			when:    recovering(tok2, func(r *Refresh) { r.ClientID = foreign }),
			then:    []Event{ev("evt-1", RefreshRejected, outside, 3, withReason(ReasonClientMismatch), withHash(tok2.Hash()), withPresented(2, foreign))},
			thenErr: EInvalidGrant},
		{name: "an older ancestor is a replay", at: inside, when: recovering(tok1, none),
			then: []Event{
				ev("evt-1", ReplayDetected, inside, 3, withHash(tok1.Hash()), withPresented(1, "")),
				ev("evt-2", FamilyRevoked, inside, 3, withReason(ReasonReplayDetected)),
			},
			thenErr: EInvalidGrant},
		{name: "the current token rotates", at: outside, when: recovering(tok3, func(r *Refresh) { r.Child = tok4 }),
			then: []Event{ev("evt-1", TokenRotated, outside, 4, withHash(tok4.Hash()), withScope(grantScope), withAud(grantAud[:1]),
				withIdle(outside.Add(testPolicy.IdleTTL)))}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := testDecider(testPolicy, tc.at).Decide(Fold(h3), tc.when)
			if diff := diffEvents(got, tc.then); diff != "" {
				t.Errorf("events differ:\n%s", diff)
			}
			if ErrorCode(err) != tc.thenErr && !(tc.thenErr == "" && err == nil) {
				t.Errorf("error = %v, want %q", err, tc.thenErr)
			}
		})
	}
}
