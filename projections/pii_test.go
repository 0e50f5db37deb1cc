package projections

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/pii"
	"github.com/tokend/tokend/tokens"
)

// protectedEvent is an event of alice as the test made it.
type protectedEvent struct {
	seq     uint64
	family  string
	sealed  bool
	context domain.Context
}

// protect turns personal data protection on for h's command service
// from now on, and returns the key store and protector it seals with.
func (h *harness) protect(t *testing.T) (*pii.Store, *events.Protector) {
	t.Helper()
	k, err := pii.NewKeys([]byte("0123456789abcdef0123456789abcdef-read-model"))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pii.OpenStore(t.Context(), h.js, k, pii.Config{Replicas: 1, CacheSize: 16, MarkerTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(keys.Stop)
	protector := events.NewProtector(keys, nil)
	store := events.NewStore(h.nc, h.js, h.stream, subjects)
	store.Protector = protector
	h.writer = events.NewWriter(store, 64)
	h.svc = tokens.NewService(h.writer, h.codec, h.policy, h.clock)
	return keys, protector
}

// TestProtectedRebuildIsIdentical: invariant 8 with protection on: the
// read model rebuilt from sealed events holds the same rows, sealed parts
// included, as the one built while they were written.
func TestProtectedRebuildIsIdentical(t *testing.T) {
	h := MustHarness(t)
	h.protect(t)
	for _, row := range mustRebuildIdentically(t, h, 5)["audit_events"] {
		if !strings.Contains(fmt.Sprint(row), "p:") {
			t.Fatalf("an audit row of a protected workload holds no pseudonym: %v", row)
		}
	}
}

// TestReaderFindsSubjectUnderBothForms: with protection on, a subject's
// events and families are found whether they were stored in clear (before
// protection) or under its pseudonym, in seq order and page by page; they
// answer in clear while the subject's key exists, and erased after.
func TestReaderFindsSubjectUnderBothForms(t *testing.T) {
	h := MustHarness(t)
	ctx := t.Context()
	inClear := h.svc
	keys, protector := h.protect(t)
	protected := h.svc

	// given: alice's families issued in clear and sealed by turns, with
	// bob's between them
	var alice []protectedEvent
	var last uint64
	var legacyToken string
	for i := range 6 {
		svc := map[bool]*tokens.Service{false: inClear, true: protected}[i%2 == 1]
		c := domain.Context{"ip": fmt.Sprintf("203.0.113.%d", i)}
		g, err := svc.Issue(ctx, tokens.IssueRequest{Subject: "alice", ClientID: "web", Context: c})
		if err != nil {
			t.Fatal(err)
		}
		alice = append(alice, protectedEvent{seq: g.Seq, family: g.Family.ID, sealed: i%2 == 1, context: c})
		if i == 0 {
			legacyToken = g.Token.Value()
		}
		if g, err = svc.Issue(ctx, tokens.IssueRequest{Subject: "bob", ClientID: "web"}); err != nil {
			t.Fatal(err)
		}
		last = g.Seq
	}
	// and: alice's first family, issued in clear, rotated under protection
	c := domain.Context{"ip": "198.51.100.7"}
	g, err := protected.Refresh(ctx, tokens.RefreshRequest{Token: legacyToken, ClientID: "web", Context: c})
	if err != nil {
		t.Fatal(err)
	}
	alice = append(alice, protectedEvent{seq: g.Seq, family: alice[0].family, sealed: true, context: c})
	last = max(last, g.Seq)
	db := h.openDB(t, "projections.db")
	p := h.project(t, db, 3, last)
	r := NewReader(db, p, h.clock)
	r.Protector = protector

	pseudonym := protector.Pseudonym("alice")
	// audit reads alice's events page by page, limit at a time, and checks
	// each against what was made, erased if erased and stored sealed.
	audit := func(limit int, erased bool) {
		t.Helper()
		var got []AuditEvent
		for after := uint64(0); ; {
			page, err := r.Audit(ctx, AuditFilter{Subject: "alice", AfterSeq: after, Limit: limit})
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Events) > limit {
				t.Fatalf("limit %d: a page of %d", limit, len(page.Events))
			}
			got = append(got, page.Events...)
			if len(page.Events) < limit {
				break
			}
			after = page.NextAfterSeq
		}
		if len(got) != len(alice) {
			t.Fatalf("limit %d: %d events of alice, want %d", limit, len(got), len(alice))
		}
		for i, e := range got {
			want := alice[i]
			var gotCtx domain.Context
			if err := json.Unmarshal(e.Context, &gotCtx); err != nil {
				t.Fatal(err)
			}
			switch {
			case e.Seq != want.seq || e.FamilyID != want.family:
				t.Fatalf("limit %d: event %d is seq %d of %s, want seq %d of %s", limit, i, e.Seq, e.FamilyID, want.seq, want.family)
			case erased && want.sealed:
				if e.Subject != pseudonym || !e.Erased || len(gotCtx) != 0 {
					t.Fatalf("after the erasure, sealed event %d answers %+v", e.Seq, e)
				}
			default: // in clear, or sealed while the key exists
				if e.Subject != "alice" || e.Erased || !maps.Equal(gotCtx, want.context) {
					t.Fatalf("event %d (sealed %v) answers subject %q, context %s, erased %v", e.Seq, want.sealed, e.Subject, e.Context, e.Erased)
				}
			}
		}
	}
	families := func() []string {
		t.Helper()
		ids, err := r.RevocableFamilies(ctx, "alice", "")
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(ids)
		return ids
	}
	var wantFamilies []string
	for _, e := range alice[:6] {
		wantFamilies = append(wantFamilies, e.family)
	}
	slices.Sort(wantFamilies)
	sealedFamily := alice[1].family

	// then: every event of alice, in order, however paged
	for _, limit := range []int{1, 2, 3, 100} {
		audit(limit, false)
	}
	if got := families(); !slices.Equal(got, wantFamilies) {
		t.Fatalf("revocable families of alice %v, want %v", got, wantFamilies)
	}
	if v, err := r.Family(ctx, sealedFamily); err != nil || v.Subject != "alice" || v.Erased {
		t.Fatalf("sealed family %+v, %v", v, err)
	}

	// when: alice's key is erased
	if err := keys.Erase(ctx, pseudonym); err != nil {
		t.Fatal(err)
	}
	// then: her sealed rows answer erased, found all the same
	for _, limit := range []int{2, 100} {
		audit(limit, true)
	}
	if got := families(); !slices.Equal(got, wantFamilies) {
		t.Fatalf("revocable families of alice after the erasure %v, want %v", got, wantFamilies)
	}
	if v, err := r.Family(ctx, sealedFamily); err != nil || v.Subject != pseudonym || !v.Erased {
		t.Fatalf("sealed family after the erasure %+v, %v", v, err)
	}

	// A reader without the deployment key refuses sealed rows.
	plain := NewReader(db, p, h.clock)
	if _, err := plain.Audit(ctx, AuditFilter{FamilyID: sealedFamily, Limit: 10}); !errors.Is(err, events.ErrSealedWithoutKey) {
		t.Fatalf("audit of a sealed family without protection: %v", err)
	}
	if _, err := plain.Family(ctx, sealedFamily); !errors.Is(err, events.ErrSealedWithoutKey) {
		t.Fatalf("a sealed family without protection: %v", err)
	}
}
