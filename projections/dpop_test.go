package projections

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nuid"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/tokens"
)

// thumbprint is a well-formed RFC 7638 thumbprint named by seed.
func thumbprint(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// dpopWorkload writes what bound families go through: rotations with the
// family's key, a refresh without a proof, a proof by another key (the
// family revoked, or only recorded under audit_only). It decides through
// the domain and stores through h.writer, as the command service does, so
// every workload holds DPoP events. It returns the last event's sequence.
func (h *harness) dpopWorkload(tb testing.TB) uint64 {
	tb.Helper()
	var last uint64
	for i, onMismatch := range []domain.ReplayAction{domain.ReplayRevokeFamily, domain.ReplayAuditOnly} {
		key := thumbprint("family key " + string(rune('a'+i)))
		tok, seq := h.issueBound(tb, "user-dpop", "client-dpop", key)
		tok, _, _ = h.refreshBound(tb, tok, key, onMismatch)
		_, _, err := h.refreshBound(tb, tok, "", onMismatch)
		if domain.ErrorCode(err) != domain.EInvalidDPoPProof {
			tb.Fatalf("bound family refreshed without a proof: %v", err)
		}
		_, seq, err = h.refreshBound(tb, tok, thumbprint("thief"), onMismatch)
		if !errors.Is(err, domain.ErrInvalidGrant) {
			tb.Fatalf("bound family refreshed with another key: %v", err)
		}
		last = max(last, seq)
	}
	return last
}

// issueBound issues a family bound to the key jkt.
func (h *harness) issueBound(tb testing.TB, subject, clientID, jkt string) (domain.Token, uint64) {
	tb.Helper()
	id := make([]byte, 16)
	var secret [domain.SecretSize]byte
	rand.Read(id)
	rand.Read(secret[:])
	tok := h.codec.Mint(domain.NewID(id), 1, secret)
	d, err := h.writer.Handle(context.Background(), tok.FamilyID, func(f domain.Family) ([]domain.Event, error) {
		return h.decider().Decide(f, domain.Issue{Token: tok, Subject: subject, ClientID: clientID, Scope: []string{"openid"},
			Context: domain.Context{"ip": "203.0.113.7"}, DPoPJKT: jkt})
	})
	if err != nil {
		tb.Fatal(err)
	}
	return tok, d.Seq
}

// refreshBound presents tok, the family's current token, with a proof by
// the key proofJKT ("" for none), and returns the child if it rotated.
func (h *harness) refreshBound(tb testing.TB, tok domain.Token, proofJKT string, onMismatch domain.ReplayAction) (domain.Token, uint64, error) {
	tb.Helper()
	child, err := h.codec.MintChild(tok)
	if err != nil {
		tb.Fatal(err)
	}
	h.now = h.now.Add(time.Second)
	d, err := h.writer.Handle(context.Background(), tok.FamilyID, func(f domain.Family) ([]domain.Event, error) {
		return h.decider().Decide(f, domain.Refresh{Presented: tok, ClientID: f.ClientID, Child: child, ProofJKT: proofJKT,
			OnReplay: onMismatch, Context: domain.Context{"ip": "198.51.100.9"}})
	})
	return child, d.Seq, err
}

func (h *harness) decider() domain.Decider {
	return domain.Decider{Policy: h.policy, Now: h.clock, NewEventID: nuid.Next}
}

// TestReadModelShowsTheBinding: the family view names the key its family
// is bound to, the audit trail the key on each of its events and, on
// token.key_mismatch, the other key.
func TestReadModelShowsTheBinding(t *testing.T) {
	h := MustHarness(t)
	ctx := context.Background()
	key, thief := thumbprint("key"), thumbprint("thief")
	tok, _ := h.issueBound(t, "user-1", "web-app", key)
	tok, _, err := h.refreshBound(t, tok, key, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.refreshBound(t, tok, "", ""); domain.ErrorCode(err) != domain.EInvalidDPoPProof {
		t.Fatalf("without a proof: %v", err)
	}
	_, last, err := h.refreshBound(t, tok, thief, "")
	if !errors.Is(err, domain.ErrInvalidGrant) {
		t.Fatalf("with another key: %v", err)
	}
	bearer, err := h.svc.Issue(ctx, tokens.IssueRequest{Subject: "user-1", ClientID: "web-app"})
	if err != nil {
		t.Fatal(err)
	}
	db := h.openDB(t, "projections.db")
	p := h.project(t, db, 10, max(last, bearer.Seq))
	r := NewReader(db, p, h.clock)

	v, err := r.Family(ctx, tok.FamilyID)
	if err != nil || v.DPoPJKT != key || v.Status != domain.StatusRevoked || v.RevokedReason != domain.ReasonDPoPKeyMismatch {
		t.Fatalf("bound family: %+v %v", v, err)
	}
	if v, err := r.Family(ctx, bearer.Family.ID); err != nil || v.DPoPJKT != "" {
		t.Fatalf("bearer family: %+v %v", v, err)
	}
	page, err := r.Audit(ctx, AuditFilter{FamilyID: tok.FamilyID, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	type row struct{ typ, reason, dpopJKT, presentedJKT string }
	var got []row
	for _, e := range page.Events {
		got = append(got, row{e.Type, e.Reason, e.DPoPJKT, e.PresentedJKT})
	}
	want := []row{
		{"token.issued", "", key, ""},
		{"token.rotated", "", key, ""},
		{"refresh.rejected", "dpop_proof_missing", key, ""},
		{"token.key_mismatch", "", key, thief},
		{"family.revoked", "dpop_key_mismatch", key, ""},
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit:\n%+v\nwant\n%+v", got, want)
	}
	// Key mismatches are rare, read with replays through audit_rare.
	page, err = r.Audit(ctx, AuditFilter{Types: []string{"token.key_mismatch", "token.replay_detected"}, Limit: 10})
	if err != nil || len(page.Events) != 1 || page.Events[0].PresentedJKT != thief {
		t.Fatalf("key mismatches and replays: %+v %v", page.Events, err)
	}
}

// TestMigrationKeepsRowsUnbound: migration 0012 leaves the rows a read
// model holds unbound, which is what their events say, and indexes the
// key mismatches among the rare types.
func TestMigrationKeepsRowsUnbound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "projections.db")
	old := migratedTo(t, path, 11)
	if _, err := old.Exec(`INSERT INTO audit_events (seq, id, type, time, family_id, subject, client_id, generation, reason,
		context, max_time_upto, min_time_from) VALUES (1, 'e1', 'token.replay_detected', 10, 'f', 's', 'c', 2, '', '{}', 10, 10)`); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Exec(`INSERT INTO families (family_id, subject, client_id, scope, audience, status, generation, current_hash,
		created_at, last_used_at, idle_expires_at, absolute_expires_at, revoked_reason, last_seq)
		VALUES ('f', 's', 'c', '', '[]', 'active', 2, 'h', 10, 10, 20, 30, '', 1)`); err != nil {
		t.Fatal(err)
	}
	db := mustUpgrade(t, old, path)
	r := &Reader{db: db, p: &Projector{}, now: func() time.Time { return time.Unix(0, 15) }}
	page, err := r.Audit(context.Background(), AuditFilter{Types: []string{"token.replay_detected", "token.key_mismatch"}, Limit: 10})
	if err != nil || len(page.Events) != 1 || page.Events[0].DPoPJKT != "" || page.Events[0].PresentedJKT != "" {
		t.Fatalf("after the migration: %+v %v", page.Events, err)
	}
	if v, err := r.Family(context.Background(), "f"); err != nil || v.DPoPJKT != "" {
		t.Fatalf("family after the migration: %+v %v", v, err)
	}
	var indexed int
	if err := db.reader.QueryRow(`SELECT count(*) FROM audit_events INDEXED BY audit_rare
		WHERE type IN ('token.replay_detected', 'token.key_mismatch', 'family.revoked', 'refresh.rejected')`).Scan(&indexed); err != nil || indexed != 1 {
		t.Fatalf("%d rows in audit_rare, %v", indexed, err)
	}
}
