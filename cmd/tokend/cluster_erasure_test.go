//go:build cluster

package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/pii"
)

// TestClusterErasure: on the three-node cluster, with every bucket
// replicated three times, an erasure destroys the subject's key (a secure
// delete on a replicated stream, then the purge) and every answer after
// it is redacted, while another subject's stay readable.
func TestClusterErasure(t *testing.T) {
	creds := mustCredentials(t)
	c := mustCluster(t)
	key := piiKeyFile(t)
	var app *App
	for range 2 {
		cfg := testConfig(t)
		cfg.NATSURL = c.urls()
		cfg.StreamReplicas = 3
		cfg.PIIKeyFile = key
		creds.login(&cfg)
		app = MustApp(t, cfg, nil)
	}
	issuer, _ := creds.connect(t, c.urls(), "issuer")
	admin, _ := creds.connect(t, c.urls(), "admin")
	auditor, _ := creds.connect(t, c.urls(), "auditor")
	issue := func(subject string) wire.TokenReply {
		var f wire.TokenReply
		eventstest.CheckFor(t, patience, 100*time.Millisecond, func() (err error) {
			f, err = requestOnce(issuer, "tokens.cmd.issue", map[string]any{"subject": subject, "client_id": "web-app",
				"context": map[string]string{"ip": erasedIP, "user_agent": erasedUA}})
			return err
		})
		return f
	}
	erasedFam, keptFam := issue(erasedSubject), issue(keptSubject)

	data, _ := json.Marshal(api.SubjectEraseRequest{Subject: erasedSubject, Reason: "DSR-cluster", By: "dpo"})
	msg, err := admin.Request("tokens.admin.subjects.erase", data, 30*time.Second)
	if err != nil || msg.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("erase: %v %s", err, msg.Data)
	}
	var erased api.SubjectErased
	if err := json.Unmarshal(msg.Data, &erased); err != nil || erased.RevokedFamilies != 1 {
		t.Fatalf("erase: %s", msg.Data)
	}
	// Through tokend's own connection: no role may read the bucket.
	info, err := app.js.Stream(t.Context(), "KV_"+pii.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if r := info.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("the key bucket has %d replicas, want 3", r)
	}
	kv, err := app.js.KeyValue(t.Context(), pii.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(t.Context(), strings.TrimPrefix(erased.Pseudonym, "p:")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the erased subject's key: %v", err)
	}
	for _, f := range []struct {
		fam    wire.TokenReply
		erased bool
	}{{erasedFam, true}, {keptFam, false}} {
		req, _ := json.Marshal(wire.AuditRequest{FamilyID: f.fam.FamilyID, MinSeq: erased.Seq})
		var page wire.AuditPage
		eventstest.CheckFor(t, patience, 100*time.Millisecond, func() error {
			msg, err := auditor.Request("tokens.query.audit", req, 5*time.Second)
			if err == nil {
				err = json.Unmarshal(msg.Data, &page)
			}
			return err
		})
		for _, e := range page.Events {
			if e.Erased != f.erased || strings.Contains(string(e.Context), erasedIP) == f.erased {
				t.Fatalf("family %s (erased %v): %+v", f.fam.FamilyID, f.erased, page.Events)
			}
		}
	}
}
