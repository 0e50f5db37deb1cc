package domain

import (
	"testing"
	"time"
)

func TestRefreshTokenActive(t *testing.T) {
	c := MustCodec(t)
	tok := func(gen uint64) Token { return MustMint(t, c, famA, gen, byte(gen)) }
	r2, r3 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	h3 := []Event{issuedAt(t0, tok(1), grantScope, grantAud), rotatedAt(r2, tok(2)), rotatedAt(r3, tok(3))}
	f := Fold(h3) // current tok(3), expiring idle at r3+1h
	revoked := Fold(append(h3, ev("given-4", FamilyRevoked, r3.Add(time.Second), 3, withReason(ReasonRevoked))))

	// underKey is a generation-1 token of famB under retiredKey, retired at
	// retiredAt, as a codec holding that key parses it; famB is created at t0
	// with it as its current token.
	underKey := func(retiredAt time.Time) (Token, Family) {
		old := retiredKey
		old.RetiredAt = retiredAt
		tk, err := MustCodec(t, testKey, old).Parse(MustMint(t, MustCodec(t, retiredKey), famB, 1, 0x77).Value())
		if err != nil {
			t.Fatal(err)
		}
		return tk, Fold([]Event{issuedAt(t0, tk, grantScope, grantAud)})
	}
	leaked, leakedFamily := underKey(t0.Add(-RetiredKeyGrace - time.Second)) // retired (and out of use) before the family
	rotatedOut, rotatedOutFamily := underKey(t0.Add(time.Hour))              // retired after the family was made

	tests := []struct {
		name string
		f    Family
		tok  Token
		at   time.Time
		want bool
	}{
		{"current", f, tok(3), r3, true},
		{"current, just before idle expiry", f, tok(3), r3.Add(time.Hour - time.Nanosecond), true},
		{"current at idle expiry", f, tok(3), r3.Add(time.Hour), false},
		{"just-rotated parent inside the reuse interval", f, tok(2), r3.Add(time.Second), false},
		{"ancestor", f, tok(1), r3, false},
		{"current generation, other secret", f, MustMint(t, c, famA, 3, 0xee), r3, false},
		{"next generation", f, tok(4), r3, false},
		{"another family's token", f, MustMint(t, c, famB, 3, 3), r3, false},
		{"no family", Family{}, tok(1), t0, false},
		{"revoked family", revoked, tok(3), r3.Add(2 * time.Second), false},
		{"under a key retired after the family was made", rotatedOutFamily, rotatedOut, t0.Add(time.Minute), true},
		{"under a key retired before the family was made", leakedFamily, leaked, t0.Add(time.Minute), false},
	}
	for _, tc := range tests {
		if got := tc.f.RefreshTokenActive(tc.tok, tc.at); got != tc.want {
			t.Errorf("%s: RefreshTokenActive = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAccessTokenActive(t *testing.T) {
	c := MustCodec(t)
	r2 := t0.Add(10 * time.Minute)
	history := []Event{issuedAt(t0, MustMint(t, c, famA, 1, 1), grantScope, grantAud), rotatedAt(r2, MustMint(t, c, famA, 2, 2))}
	f := Fold(history)
	revoked := Fold(append(history, ev("given-3", FamilyRevoked, r2.Add(time.Minute), 2, withReason(ReasonRevoked))))
	now := r2.Add(2 * time.Minute)

	// minted is what tokend puts in the access token of the rotation at r2
	// (iat in whole seconds, exp 5 minutes later), changed by edit.
	minted := func(edit func(*AccessClaims)) AccessClaims {
		a := AccessClaims{FamilyID: famA, ClientID: owner, Subject: subj, Scope: grantScope, Audience: grantAud[:1],
			IssuedAt: r2.Truncate(time.Second), ExpiresAt: r2.Add(5 * time.Minute).Truncate(time.Second)}
		if edit != nil {
			edit(&a)
		}
		return a
	}
	tests := []struct {
		name   string
		f      Family
		claims AccessClaims
		at     time.Time
		want   bool
	}{
		{"as minted", f, minted(nil), now, true},
		{"down-scoped", f, minted(func(a *AccessClaims) { a.Scope = []string{"api:read"} }), now, true},
		{"no scope", f, minted(func(a *AccessClaims) { a.Scope = nil }), now, true},
		{"the family's other audience", f, minted(func(a *AccessClaims) { a.Audience = grantAud[1:] }), now, true},
		{"no audience", f, minted(func(a *AccessClaims) { a.Audience = nil }), now, true},
		{"issued by a clock a little behind the family's", f, minted(func(a *AccessClaims) { a.IssuedAt = t0.Add(-IssuedAtLeeway) }), now, true},
		{"at its expiry", f, minted(nil), r2.Add(5 * time.Minute), false},
		{"a scope outside the grant", f, minted(func(a *AccessClaims) { a.Scope = []string{"api:read", "admin"} }), now, false},
		{"an audience outside the family", f, minted(func(a *AccessClaims) { a.Audience = []string{"https://other.example.com"} }), now, false},
		{"one audience outside the family", f, minted(func(a *AccessClaims) { a.Audience = append(grantAud[:1:1], "https://other.example.com") }), now, false},
		{"another client", f, minted(func(a *AccessClaims) { a.ClientID = foreign }), now, false},
		{"another subject", f, minted(func(a *AccessClaims) { a.Subject = "user-43" }), now, false},
		{"issued before the family existed", f, minted(func(a *AccessClaims) { a.IssuedAt = t0.Add(-IssuedAtLeeway - time.Second) }), now, false},
		{"another family", f, minted(func(a *AccessClaims) { a.FamilyID = famB }), now, false},
		{"no family", Family{}, minted(nil), now, false},
		{"revoked family", revoked, minted(nil), now, false},
		{"expired family", f, minted(func(a *AccessClaims) { a.ExpiresAt = r2.Add(2 * time.Hour) }), r2.Add(time.Hour), false},
		{"expired family, the moment before", f, minted(func(a *AccessClaims) { a.ExpiresAt = r2.Add(2 * time.Hour) }), r2.Add(time.Hour - time.Nanosecond), true},
	}
	for _, tc := range tests {
		if got := tc.f.AccessTokenActive(tc.claims, tc.at); got != tc.want {
			t.Errorf("%s: AccessTokenActive = %v, want %v", tc.name, got, tc.want)
		}
	}
}
