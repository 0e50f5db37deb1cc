package domain

import (
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

// jktOf is a thumbprint-shaped value; the domain only compares them.
func jktOf(name string) string {
	sum := sha256.Sum256([]byte(name))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func TestDecideDPoP(t *testing.T) {
	c := MustCodec(t)
	tok := func(gen uint64) Token { return MustMint(t, c, famA, gen, byte(gen)) }
	tok1, tok2, tok3 := tok(1), tok(2), tok(3)
	key, other := jktOf("the family's key"), jktOf("a thief's key")
	bound := func(e *Event) { e.DPoPJKT = key }
	r2 := t0.Add(10 * time.Minute)

	issued := issuedAt(t0, tok1, grantScope, grantAud)
	issued.DPoPJKT = key
	boundH2 := []Event{issued, rotatedAt(r2, tok2)}
	boundH2[1].DPoPJKT = key
	bearerH1 := []Event{issuedAt(t0, tok1, grantScope, grantAud)}

	refresh := func(p Token, mods ...func(*Refresh)) Refresh {
		r := Refresh{Presented: p, ClientID: owner, Context: reqCtx}
		for _, m := range mods {
			m(&r)
		}
		return r
	}
	proof := func(jkt string) func(*Refresh) { return func(r *Refresh) { r.ProofJKT = jkt } }
	child := func(t Token) func(*Refresh) { return func(r *Refresh) { r.Child = t } }
	reusable := func(t Token) func(*Refresh) { return func(r *Refresh) { r.Reusable = t } }
	onReplay := func(a ReplayAction) func(*Refresh) { return func(r *Refresh) { r.OnReplay = a } }
	required := func(r *Refresh) { r.ProofRequired = true }
	by := func(client string) func(*Refresh) { return func(r *Refresh) { r.ClientID = client } }

	keyMismatch := func(at time.Time, gen uint64, presented Token) Event {
		return ev("evt-1", KeyMismatch, at, gen, bound, withHash(presented.Hash()), withPresented(presented.Generation, ""),
			func(e *Event) { e.PresentedJKT = other })
	}
	at := r2.Add(time.Second) // inside the reuse interval of the rotation to tok2
	late := r2.Add(time.Minute)

	tests := []struct {
		name    string
		given   []Event
		at      time.Time
		when    any
		then    []Event
		thenErr string
	}{
		{name: "issue bound to a key records it", at: t0,
			when: Issue{Token: tok1, Subject: subj, ClientID: owner, Scope: grantScope, Audience: grantAud, Context: reqCtx, DPoPJKT: key},
			then: []Event{ev("evt-1", TokenIssued, t0, 1, bound, withHash(tok1.Hash()), withScope(grantScope), withAud(grantAud), withIssuedExpiries(t0))}},
		{name: "issue with a malformed thumbprint", at: t0,
			when: Issue{Token: tok1, Subject: subj, ClientID: owner, DPoPJKT: strings.Repeat("x", 42)}, thenErr: EInvalidRequest},
		{name: "issue with a padded thumbprint", at: t0,
			when: Issue{Token: tok1, Subject: subj, ClientID: owner, DPoPJKT: key[:42] + "="}, thenErr: EInvalidRequest},

		{name: "bound: the family's key rotates", given: boundH2, at: late, when: refresh(tok2, proof(key), child(tok3)),
			then: []Event{ev("evt-1", TokenRotated, late, 3, bound, withHash(tok3.Hash()), withScope(grantScope), withAud(grantAud[:1]),
				withIdle(late.Add(testPolicy.IdleTTL)))}},
		{name: "bound: no proof is refused and recorded", given: boundH2, at: late, when: refresh(tok2, child(tok3)),
			then: []Event{ev("evt-1", RefreshRejected, late, 2, bound, withReason(ReasonDPoPProofMissing), withHash(tok2.Hash()),
				withPresented(2, ""))},
			thenErr: EInvalidDPoPProof},
		{name: "bound: another key is theft: mismatch and revocation together", given: boundH2, at: late,
			when:    refresh(tok2, proof(other), child(tok3)),
			then:    []Event{keyMismatch(late, 2, tok2), ev("evt-2", FamilyRevoked, late, 2, bound, withReason(ReasonDPoPKeyMismatch))},
			thenErr: EInvalidGrant},
		{name: "bound: another key with audit_only is recorded and refused", given: boundH2, at: late,
			when: refresh(tok2, proof(other), child(tok3), onReplay(ReplayAuditOnly)),
			then: []Event{keyMismatch(late, 2, tok2)}, thenErr: EInvalidGrant},
		{name: "bound: another key with revoke_subject revokes the family here", given: boundH2, at: late,
			when:    refresh(tok2, proof(other), child(tok3), onReplay(ReplayRevokeSubject)),
			then:    []Event{keyMismatch(late, 2, tok2), ev("evt-2", FamilyRevoked, late, 2, bound, withReason(ReasonDPoPKeyMismatch))},
			thenErr: EInvalidGrant},
		{name: "bound: the parent inside the reuse interval gets its child with the family's key", given: boundH2, at: at,
			when: refresh(tok1, proof(key), reusable(tok2)),
			then: []Event{ev("evt-1", TokenReused, at, 2, bound, withHash(tok1.Hash()), withScope(grantScope), withAud(grantAud[:1]),
				withPresented(1, ""))}},
		{name: "bound: the parent inside the reuse interval with another key is theft, not a retry", given: boundH2, at: at,
			when:    refresh(tok1, proof(other), reusable(tok2)),
			then:    []Event{keyMismatch(at, 2, tok1), ev("evt-2", FamilyRevoked, at, 2, bound, withReason(ReasonDPoPKeyMismatch))},
			thenErr: EInvalidGrant},
		{name: "bound: another client with another key is a client mismatch, never a revocation", given: boundH2, at: late,
			when: refresh(tok2, proof(other), child(tok3), by(foreign)),
			then: []Event{ev("evt-1", RefreshRejected, late, 2, bound, withReason(ReasonClientMismatch), withHash(tok2.Hash()),
				withPresented(2, foreign))},
			thenErr: EInvalidGrant},
		{name: "bound: a revoked family refuses another key as revoked",
			given: append(boundH2[:2:2], ev("given-rev", FamilyRevoked, r2.Add(time.Second), 2, bound, withReason(ReasonRevoked))),
			at:    late, when: refresh(tok2, proof(other), child(tok3)),
			then: []Event{ev("evt-1", RefreshRejected, late, 2, bound, withReason(ReasonFamilyRevoked), withHash(tok2.Hash()),
				withPresented(2, ""))},
			thenErr: EInvalidGrant},

		{name: "bearer: a proof binds nothing in the family", given: bearerH1, at: late, when: refresh(tok1, proof(key), child(tok2)),
			then: []Event{ev("evt-1", TokenRotated, late, 2, withHash(tok2.Hash()), withScope(grantScope), withAud(grantAud[:1]),
				withIdle(late.Add(testPolicy.IdleTTL)))}},
		{name: "bearer of a client that requires DPoP: no proof is refused", given: bearerH1, at: late,
			when: refresh(tok1, child(tok2), required),
			then: []Event{ev("evt-1", RefreshRejected, late, 1, withReason(ReasonDPoPProofMissing), withHash(tok1.Hash()),
				withPresented(1, ""))},
			thenErr: EInvalidDPoPProof},
		{name: "bearer of a client that requires DPoP: a proof is enough", given: bearerH1, at: late,
			when: refresh(tok1, child(tok2), required, proof(other)),
			then: []Event{ev("evt-1", TokenRotated, late, 2, withHash(tok2.Hash()), withScope(grantScope), withAud(grantAud[:1]),
				withIdle(late.Add(testPolicy.IdleTTL)))}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := testDecider(testPolicy, tc.at).Decide(Fold(tc.given), tc.when)
			if diff := diffEvents(got, tc.then); diff != "" {
				t.Errorf("events differ:\n%s", diff)
			}
			if ErrorCode(err) != tc.thenErr && !(tc.thenErr == "" && err == nil) {
				t.Errorf("error = %v, want %q", err, tc.thenErr)
			}
			if after := Fold(append(append([]Event{}, tc.given...), got...)); after.Exists() && after.DPoPJKT != Fold(tc.given).DPoPJKT && len(tc.given) > 0 {
				t.Errorf("the binding changed: %q → %q", Fold(tc.given).DPoPJKT, after.DPoPJKT)
			}
		})
	}
}

func TestEvolveKeepsTheBinding(t *testing.T) {
	c := MustCodec(t)
	tok1 := MustMint(t, c, famA, 1, 1)
	issued := issuedAt(t0, tok1, grantScope, grantAud)
	issued.DPoPJKT = jktOf("k")
	f := Fold([]Event{issued, ev("r", FamilyRevoked, t0.Add(time.Minute), 1, withReason(ReasonRevoked))})
	if f.DPoPJKT != jktOf("k") {
		t.Fatalf("DPoPJKT after issue and revoke = %q", f.DPoPJKT)
	}
}

func TestValidThumbprint(t *testing.T) {
	for s, want := range map[string]bool{
		jktOf("x"):              true,
		"":                      false,
		jktOf("x")[:42]:         false,
		jktOf("x") + "A":        false,
		strings.Repeat("+", 43): false,
		jktOf("x")[:42] + "=":   false,
		"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I": true, // RFC 9449 section 6.1's example
	} {
		if got := ValidThumbprint(s); got != want {
			t.Errorf("ValidThumbprint(%q) = %v, want %v", s, got, want)
		}
	}
}
