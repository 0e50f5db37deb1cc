package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// TestRetentionArchivesAndForgets: past its absolute expiry a family is
// summarized by family.archived (counted in the metrics); once its history
// is out of the stream the read model drops it too, while the summary still
// makes a refresh with its old token a recorded refusal.
func TestRetentionArchivesAndForgets(t *testing.T) {
	cfg := testConfig(t)
	cfg.AbsoluteTTL, cfg.IdleTTL, cfg.Retention, cfg.ArchiveAfter = 2*time.Second, 2*time.Second, time.Second, time.Hour
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	f := mustIssue(t, nc, "user-retained", "web-app")
	next := mustRefresh(t, nc, f.RefreshToken, "web-app")
	ctx := t.Context()

	if n, err := app.janitor.SweepAll(ctx); err != nil || n != 0 {
		t.Fatalf("archived %d families before their absolute expiry: %v", n, err)
	}
	expiry, _ := time.Parse(time.RFC3339, next.RefreshTokenExpiresAt)
	eventstest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		if n, err := app.janitor.SweepAll(ctx); err != nil || n != 1 {
			return fmt.Errorf("archived %d families %v after the absolute expiry %v: %v", n, time.Now(), expiry, err)
		}
		return nil
	})
	if v := parseMetrics(t, scrape(t, app)).value("tokend_families_archived_total"); v != 1 {
		t.Fatalf("tokend_families_archived_total = %v", v)
	}
	evs := familyEvents(t, nc, f.FamilyID)
	if last := evs[len(evs)-1]; last.Type != "family.archived" {
		t.Fatalf("family ends with %s", last.Type)
	}
	view := mustQuery[wire.FamilyView](t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: f.FamilyID, MinSeq: evs[len(evs)-1].Seq})
	if view.ArchivedAt == nil || view.Status != "expired" {
		t.Fatalf("family view after archiving: %+v", view)
	}
	subject := "user-retained"
	if got := revokeReply(t, nc, wire.RevokeRequest{Subject: &subject}); got.RevokedFamilies != 0 {
		t.Fatalf("revoke by subject counted an expired family: %+v", got)
	}

	// The history leaves the stream a second after the absolute expiry;
	// the read model follows at its next prune.
	eventstest.CheckFor(t, 60*time.Second, 200*time.Millisecond, func() error {
		if n := len(familyEvents(t, nc, f.FamilyID)); n != 1 {
			return fmt.Errorf("%d events of the family in the stream", n)
		}
		return nil
	})
	if _, err := app.projector.Prune(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	page := mustQuery[wire.AuditPage](t, nc, "tokens.query.audit", wire.AuditRequest{FamilyID: f.FamilyID})
	if len(page.Events) != 1 || page.Events[0].Type != "family.archived" {
		t.Fatalf("audit rows after the history left the stream: %+v", page.Events)
	}
	wantError(t, refresh(t, nc, next.RefreshToken, "web-app"), "invalid_grant")
	evs = familyEvents(t, nc, f.FamilyID)
	if last := evs[len(evs)-1]; last.Type != "refresh.rejected" || last.Reason != "expired" {
		t.Fatalf("a refresh of an archived family recorded %s/%s", last.Type, last.Reason)
	}
}
