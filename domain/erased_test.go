package domain

import (
	"errors"
	"testing"
	"time"
)

// TestFamilyOfAnErasedSubject: a live family whose subject's data key is
// gone (SubjectErased) is revoked at its next refresh, which is refused,
// and none of its tokens is active: a token minted for it would name the
// subject's pseudonym. Revoking it and refusing a foreign client work as
// for any family.
func TestFamilyOfAnErasedSubject(t *testing.T) {
	c := MustCodec(t)
	tok1, tok2 := MustMint(t, c, famA, 1, 1), MustMint(t, c, famA, 2, 2)
	at := t0.Add(time.Minute)
	f := Fold([]Event{issuedAt(t0, tok1, grantScope, grantAud)})
	f.SubjectErased = true
	d := Decider{Policy: testPolicy, NewEventID: sequentialIDs("evt-"), Now: func() time.Time { return at }}

	got, err := d.Decide(f, Refresh{Presented: tok1, ClientID: owner, Context: reqCtx, Child: tok2})
	if !errors.Is(err, ErrInvalidGrant) || len(got) != 1 || got[0].Type != FamilyRevoked || got[0].Reason != ReasonSubjectErased {
		t.Fatalf("refresh: %v %+v, want one family.revoked (subject_erased) and invalid_grant", err, got)
	}
	if after := Evolve(f, got[0]); after.Status != StatusRevoked || !after.SubjectErased {
		t.Fatalf("after the refresh: %+v", after)
	}
	got, err = d.Decide(f, Refresh{Presented: tok1, ClientID: foreign, Context: reqCtx, Child: tok2})
	if !errors.Is(err, ErrInvalidGrant) || len(got) != 1 || got[0].Reason != ReasonClientMismatch {
		t.Fatalf("a foreign client's refresh: %v %+v, want client_mismatch", err, got)
	}
	if got, err := d.Decide(f, Revoke{Reason: "logout"}); err != nil || len(got) != 1 || got[0].Reason != "logout" {
		t.Fatalf("revoke: %v %+v", err, got)
	}
	if f.RefreshTokenActive(tok1, at) {
		t.Fatal("the current token of an erased subject's family is active")
	}
	claims := AccessClaims{FamilyID: famA, ClientID: owner, Subject: f.Subject, Scope: grantScope, IssuedAt: at, ExpiresAt: at.Add(time.Hour)}
	if f.AccessTokenActive(claims, at) {
		t.Fatal("an access token of an erased subject's family is active")
	}
	f.SubjectErased = false
	if !f.RefreshTokenActive(tok1, at) || !f.AccessTokenActive(claims, at) {
		t.Fatal("the same family with its subject is active: the test checks nothing")
	}
}
