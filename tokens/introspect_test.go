package tokens

import (
	"context"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

// TestIntrospectReadsTheLatestFamily: two services on one stream, as two
// instances; each answers from the family's last event, never from what
// its own writer cached.
func TestIntrospectReadsTheLatestFamily(t *testing.T) {
	fx := newFixture(t)
	nc, js, stream := MustJetStream(t)
	service := func() *Service {
		return NewService(events.NewWriter(events.NewStore(nc, js, stream, testSubjects), 64), fx.codec, fx.decider.Policy,
			func() time.Time { return fx.now })
	}
	a, b := service(), service()
	ctx := context.Background()
	active := func(t *testing.T, s *Service, token string, want bool, wantSeq uint64) {
		t.Helper()
		in, err := s.IntrospectRefresh(ctx, token)
		if err != nil || in.Active != want || (wantSeq != 0 && in.Seq != wantSeq) {
			t.Fatalf("introspect: %+v %v, want active %v at seq %d", in, err, want, wantSeq)
		}
	}

	g1, err := a.Issue(ctx, IssueRequest{Subject: "u", ClientID: "web", Scope: []string{"openid", "api:read"}, Audience: []string{"https://api"}})
	if err != nil {
		t.Fatal(err)
	}
	active(t, b, g1.Token.Value(), true, g1.Seq)
	g2, err := b.Refresh(ctx, RefreshRequest{Token: g1.Token.Value(), ClientID: "web"}) // b caches generation 2
	if err != nil {
		t.Fatal(err)
	}
	g3, err := a.Refresh(ctx, RefreshRequest{Token: g2.Token.Value(), ClientID: "web"})
	if err != nil {
		t.Fatal(err)
	}
	active(t, b, g3.Token.Value(), true, g3.Seq)
	active(t, b, g2.Token.Value(), false, g3.Seq) // the just-rotated parent, inside the reuse interval
	if in, _ := b.IntrospectRefresh(ctx, g3.Token.Value()); in.Family.ClientID != "web" || in.Family.Generation != 3 {
		t.Fatalf("family of an active token: %+v", in.Family)
	}

	claims := domain.AccessClaims{FamilyID: g3.Family.ID, ClientID: "web", Subject: "u", Scope: []string{"api:read"},
		Audience: []string{"https://api"}, IssuedAt: fx.now, ExpiresAt: fx.now.Add(5 * time.Minute)}
	if in, err := b.IntrospectAccess(ctx, claims); err != nil || !in.Active {
		t.Fatalf("access token of a live family: %+v %v", in, err)
	}
	n, seq, err := a.RevokeFamily(ctx, g3.Family.ID, "", nil)
	if err != nil || n != 1 {
		t.Fatal(n, err)
	}
	active(t, b, g3.Token.Value(), false, seq)
	if in, err := b.IntrospectAccess(ctx, claims); err != nil || in.Active || in.Seq != seq {
		t.Fatalf("access token of a revoked family: %+v %v", in, err)
	}
	claims.FamilyID = "not a family id"
	if in, err := b.IntrospectAccess(ctx, claims); err != nil || in.Active || in.Seq != 0 {
		t.Fatalf("access token naming no valid family id: %+v %v", in, err)
	}
}

// TestIntrospectForgeryCostsNoIO: a token that does not verify is
// inactive without a read; one that does needs the store, and says so when
// it cannot be reached.
func TestIntrospectForgeryCostsNoIO(t *testing.T) {
	fx := newFixture(t)
	nc, js, stream := MustJetStream(t)
	s := NewService(events.NewWriter(events.NewStore(nc, js, stream, testSubjects), 64), fx.codec, fx.decider.Policy,
		func() time.Time { return fx.now })
	ctx := context.Background()
	g, err := s.Issue(ctx, IssueRequest{Subject: "u", ClientID: "web"})
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	v := g.Token.Value()
	for _, forged := range []string{"", "rt1.x", v[:len(v)-2] + "AA", "rt1.fam.1.k9.AAAA.BBBB"} {
		if in, err := s.IntrospectRefresh(ctx, forged); err != nil || in.Active || in.Seq != 0 {
			t.Errorf("%q: %+v %v, want inactive without a read", forged, in, err)
		}
	}
	if _, err := s.IntrospectRefresh(ctx, v); domain.ErrorCode(err) != domain.EUnavailable {
		t.Fatalf("a valid token with the store unreachable: %v, want temporarily_unavailable", err)
	}
}

// TestIntrospectionNamesTheBinding: introspection reads a family's DPoP
// binding from its last event, for its refresh and access tokens alike, so
// an answer can confirm the key (cnf.jkt) on any instance; a bearer
// family has none.
func TestIntrospectionNamesTheBinding(t *testing.T) {
	fx := newFixture(t)
	s, _ := newTestService(t, fx)
	ctx := context.Background()
	const jkt = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
	token := fx.codec.Mint(domain.NewID([]byte("sixteen byte id.")), 1, [domain.SecretSize]byte{1})
	// Issued through the writer: the binding comes with the issue command.
	if _, err := s.writer.Handle(ctx, token.FamilyID, func(f domain.Family) ([]domain.Event, error) {
		return fx.decider.Decide(f, domain.Issue{Token: token, Subject: "u", ClientID: "web", DPoPJKT: jkt})
	}); err != nil {
		t.Fatal(err)
	}
	in, err := s.IntrospectRefresh(ctx, token.Value())
	if err != nil || !in.Active || in.Family.DPoPJKT != jkt {
		t.Fatalf("refresh token of a bound family: %+v %v", in, err)
	}
	claims := domain.AccessClaims{FamilyID: token.FamilyID, ClientID: "web", Subject: "u", IssuedAt: fx.now, ExpiresAt: fx.now.Add(time.Minute)}
	if in, err := s.IntrospectAccess(ctx, claims); err != nil || !in.Active || in.Family.DPoPJKT != jkt {
		t.Fatalf("access token of a bound family: %+v %v", in, err)
	}
	bearer, err := s.Issue(ctx, IssueRequest{Subject: "u", ClientID: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if in, err := s.IntrospectRefresh(ctx, bearer.Token.Value()); err != nil || !in.Active || in.Family.DPoPJKT != "" {
		t.Fatalf("bearer family: %+v %v", in, err)
	}
}
