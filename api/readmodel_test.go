package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/projections"
	"github.com/tokend/tokend/tokens"
)

// TestAuditReplyFitsMessage: events with the largest context the contract
// allows, every character escaped in JSON in the reply, make 400 events
// about 2.4 MiB, far over NATS's max payload. Each encoded reply stays within
// the budget, and next_after_seq pages through every event.
func TestAuditReplyFitsMessage(t *testing.T) {
	ctx := context.Background()
	nc := eventstest.MustConnect(t, eventstest.MustJetStream(t).ClientURL())
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	subjects := events.Subjects{Prefix: "tokens"}
	stream, err := events.Setup(ctx, js, subjects, events.StreamLimits{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	codec, err := keys.NewKeyset(time.Now()).Codec()
	if err != nil {
		t.Fatal(err)
	}
	cmds := tokens.NewService(events.NewWriter(events.NewStore(nc, js, stream, subjects), 1024), codec,
		domain.Policy{ReuseInterval: 10 * time.Second, IdleTTL: time.Hour, AbsoluteTTL: 24 * time.Hour}, time.Now)
	// The largest context allowed, as two values of '<' (\u003c in JSON).
	big := domain.Context{"a": strings.Repeat("<", domain.MaxContextValue), "b": strings.Repeat("<", domain.MaxContextBytes-domain.MaxContextValue-2)}
	const n = 400
	var last uint64
	for range n {
		g, err := cmds.Issue(ctx, tokens.IssueRequest{Subject: "user-42", ClientID: "web-app", Context: big})
		if err != nil {
			t.Fatal(err)
		}
		last = g.Seq
	}

	db, err := projections.Open(ctx, filepath.Join(t.TempDir(), "projections.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p, err := projections.NewProjector(ctx, db, js, subjects, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	s := &Service{Reader: projections.NewReader(db, p, time.Now), Projector: p}
	// Projecting 400 large events can take longer than a query's wait for
	// min_seq on a loaded machine; this test is about page sizes.
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := p.WaitFor(wctx, last); err != nil {
		t.Fatal(err)
	}

	limit := wire.MaxAuditLimit
	req := wire.AuditRequest{Limit: &limit}
	var seqs []uint64
	pages := 0
	for {
		req.MinSeq = last
		page, err := s.Audit(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Events) == 0 {
			break
		}
		pages++
		body, _ := json.Marshal(page.Events)
		if len(body) > wire.MaxAuditPageBytes && len(page.Events) > 1 {
			t.Fatalf("page %d: %d events encode to %d bytes, over %d", pages, len(page.Events), len(body), wire.MaxAuditPageBytes)
		}
		for _, e := range page.Events {
			seqs = append(seqs, e.Seq)
		}
		req.AfterSeq = page.NextAfterSeq
	}
	if len(seqs) != n || seqs[n-1] != last || pages < 2 {
		t.Fatalf("%d pages held events %v; want all %d, ending at seq %d", pages, seqs, n, last)
	}
}

// TestAuditEventNamesThePresenter: an audit event in a reply carries
// presented_by and presented_generation beside client_id and generation,
// and leaves them out when the event has none.
func TestAuditEventNamesThePresenter(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	base := projections.AuditEvent{Seq: 7, ID: "e7", Type: "refresh.rejected", Time: at, FamilyID: "fam", Subject: "user-42",
		ClientID: "web-app", Generation: 2, Reason: "client_mismatch", Context: json.RawMessage(`{"ip":"2001:db8::7"}`)}
	foreign := base
	foreign.PresentedBy, foreign.PresentedGeneration = "evil-app", 1
	for _, tc := range []struct {
		e    projections.AuditEvent
		want string
	}{
		{foreign, `{"seq":7,"id":"e7","type":"refresh.rejected","time":"2026-12-01T10:00:00Z","family_id":"fam","subject":"user-42",` +
			`"client_id":"web-app","presented_by":"evil-app","generation":2,"presented_generation":1,"reason":"client_mismatch","context":{"ip":"2001:db8::7"}}`},
		{base, `{"seq":7,"id":"e7","type":"refresh.rejected","time":"2026-12-01T10:00:00Z","family_id":"fam","subject":"user-42",` +
			`"client_id":"web-app","generation":2,"reason":"client_mismatch","context":{"ip":"2001:db8::7"}}`},
	} {
		got, err := json.Marshal(auditEvent(tc.e))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}

// TestRepliesShowTheDPoPBinding: a family bound to a DPoP key names it
// (dpop_jkt), an audit event of it too, and a key mismatch the other key
// (presented_jkt); a bearer family's replies leave both out.
func TestRepliesShowTheDPoPBinding(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	const bound, other = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I", "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
	mismatch := projections.AuditEvent{Seq: 7, ID: "e7", Type: "token.key_mismatch", Time: at, FamilyID: "fam", Subject: "user-42",
		ClientID: "web-app", Generation: 2, PresentedGeneration: 2, DPoPJKT: bound, PresentedJKT: other, Context: json.RawMessage(`{}`)}
	got, _ := json.Marshal(auditEvent(mismatch))
	want := `{"seq":7,"id":"e7","type":"token.key_mismatch","time":"2026-12-01T10:00:00Z","family_id":"fam","subject":"user-42",` +
		`"client_id":"web-app","generation":2,"presented_generation":2,"dpop_jkt":"` + bound + `","presented_jkt":"` + other + `",` +
		`"reason":"","context":{}}`
	if string(got) != want {
		t.Errorf("key mismatch:\ngot  %s\nwant %s", got, want)
	}

	family := projections.FamilyView{FamilyID: "fam", Subject: "user-42", ClientID: "web-app", Status: domain.StatusActive,
		Generation: 1, CreatedAt: at, LastUsedAt: at, ExpiresAt: at.Add(time.Hour), DPoPJKT: bound}
	for _, tc := range []struct {
		dpopJKT string
		want    string
	}{
		{bound, `,"dpop_jkt":"` + bound + `"}`},
		{"", `"as_of_seq":0}`},
	} {
		family.DPoPJKT = tc.dpopJKT
		got, _ := json.Marshal(familyView(family))
		if !strings.HasSuffix(string(got), tc.want) || strings.Count(string(got), "dpop_jkt") != strings.Count(tc.want, "dpop_jkt") {
			t.Errorf("family bound to %q: %s, want it to end %s", tc.dpopJKT, got, tc.want)
		}
	}
}
