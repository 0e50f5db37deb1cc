package domain

import "testing"

// The refresh path's pure work, one rotation at a time:
//
//	go test -run '^$' -bench . ./domain

func BenchmarkParseToken(b *testing.B) {
	c := MustCodec(b)
	tok := c.Mint("Yx3kq0vVdM1oI7qf2nE8Tw", 7, testSecret(1)).Value()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Parse(tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMintToken(b *testing.B) {
	c := MustCodec(b)
	b.ReportAllocs()
	for b.Loop() {
		c.Mint("Yx3kq0vVdM1oI7qf2nE8Tw", 8, testSecret(2))
	}
}

// BenchmarkMintChild is a rotation's new token: its secret derived from the
// parent, then minted.
func BenchmarkMintChild(b *testing.B) {
	c := MustCodec(b)
	parent := c.Mint("Yx3kq0vVdM1oI7qf2nE8Tw", 7, testSecret(1))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.MintChild(parent); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecideRotation folds nothing: the writer keeps the family's state,
// so a rotation is one decision against it.
func BenchmarkDecideRotation(b *testing.B) {
	c := MustCodec(b)
	d := testDecider(testPolicy, t0)
	issue := Issue{Token: c.Mint("fam", 1, testSecret(1)), Subject: "user-42", ClientID: "web-app",
		Scope: grantScope, Audience: grantAud}
	issued, err := d.Decide(Family{}, issue)
	if err != nil {
		b.Fatal(err)
	}
	f := Fold(issued)
	cmd := Refresh{Presented: issue.Token, ClientID: "web-app", Scope: []string{"api:read"}, Context: reqCtx,
		Child: c.Mint("fam", 2, testSecret(2))}
	b.ReportAllocs()
	for b.Loop() {
		evs, err := d.Decide(f, cmd)
		if err != nil || len(evs) != 1 || evs[0].Type != TokenRotated {
			b.Fatalf("%v %+v", err, evs)
		}
	}
}
