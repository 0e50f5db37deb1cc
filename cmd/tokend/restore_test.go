package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

// TestRestoredStoreRebuildsTheReadModel: <data-dir>/jetstream restored
// from a backup under a projections.db that applied events after the
// backup point. tokend says why and rebuilds the read model: the families
// the restore lost are gone from it, and new events, at sequences the old
// read model had applied, reach it.
func TestRestoredStoreRebuildsTheReadModel(t *testing.T) {
	cfg := testConfig(t)
	store := filepath.Join(cfg.DataDir, "jetstream")

	app := MustApp(t, cfg, nil)
	mustIssue(t, eventstest.MustConnect(t, app.NATSURL()), "user-a", "web-app")
	app.Stop()
	backup := filepath.Join(t.TempDir(), "jetstream")
	if err := os.CopyFS(backup, os.DirFS(store)); err != nil {
		t.Fatal(err)
	}

	app = MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	b := mustRefresh(t, nc, mustIssue(t, nc, "user-b", "web-app").RefreshToken, "web-app")
	if f := mustQuery[wire.FamilyView](t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: b.FamilyID, MinSeq: b.Seq}); f.Generation != 2 {
		t.Fatalf("before the restore the read model holds family B at generation %d, want 2", f.Generation)
	}
	app.Stop()

	if err := os.RemoveAll(store); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(store, os.DirFS(backup)); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	app = MustApp(t, cfg, logs)
	nc = eventstest.MustConnect(t, app.NATSURL())

	if got := mustQuery[wire.Introspection](t, nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: b.RefreshToken}); got.Active {
		t.Fatalf("family B, lost with the restore, introspects active: %+v", got)
	}
	wantError(t, call(t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: b.FamilyID}), "not_found")

	c := mustIssue(t, nc, "user-c", "web-app")
	if c.Seq > b.Seq {
		t.Fatalf("family C got seq %d, after B's %d: the test needs a sequence the old read model applied", c.Seq, b.Seq)
	}
	if f := mustQuery[wire.FamilyView](t, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: c.FamilyID, MinSeq: c.Seq}); f.Subject != "user-c" {
		t.Fatalf("family C after the restore: %+v", f)
	}
	if got := mustQuery[wire.Introspection](t, nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: c.RefreshToken, MinSeq: c.Seq}); !got.Active || got.FamilyID != c.FamilyID {
		t.Fatalf("family C's token after the restore: %+v", got)
	}
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if code, _, body := httpGet(t, app, "/readyz"); code != http.StatusOK {
			return fmt.Errorf("/readyz %d %s", code, body)
		}
		return nil
	})
	var warned bool
	for line := range strings.Lines(logs.String()) {
		warned = warned || strings.Contains(line, "level=WARN") && strings.Contains(line, "rebuilding the read model") &&
			strings.Contains(line, fmt.Sprintf("read model is ahead of the stream: applied seq %d", b.Seq))
	}
	if !warned {
		t.Fatalf("no warning saying why the read model is rebuilt:\n%s", logs)
	}
}
