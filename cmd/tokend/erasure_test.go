package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/pii"
)

// A data subject's personal data, as distinctive bytes a scan can find.
const (
	erasedSubject = "alice.erasure-test@example.org"
	erasedIP      = "198.51.100.77"
	erasedUA      = "ErasureProbe/4.2 (X11; personal-agent-7731)"
	keptSubject   = "bob.kept-test@example.org"
	keptIP        = "192.0.2.55"
)

// piiKeyFile writes a deployment key readable by its owner only.
func piiKeyFile(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "pii.key")
	if err := os.WriteFile(path, []byte(rand.Text()+rand.Text()), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// issueWith issues a family for subject with a context that names the
// caller's IP address and user agent.
func issueWith(tb testing.TB, nc *nats.Conn, subject, ip, ua string) wire.TokenReply {
	tb.Helper()
	r := call(tb, nc, "tokens.cmd.issue", wire.IssueRequest{Subject: subject, ClientID: "web",
		Context: map[string]string{"ip": ip, "user_agent": ua}})
	if r.errCode != "" {
		tb.Fatalf("issue: %s", r.raw)
	}
	return r.token
}

// answer calls subject with req and decodes its answer, failing on an
// error answer.
func answer[T any](tb testing.TB, nc *nats.Conn, subject string, req any) T {
	tb.Helper()
	r := call(tb, nc, subject, req)
	if r.errCode != "" {
		tb.Fatalf("%s: %s", subject, r.raw)
	}
	var out T
	if err := json.Unmarshal(r.raw, &out); err != nil {
		tb.Fatal(err)
	}
	return out
}

func auditPageOf(tb testing.TB, nc *nats.Conn, req wire.AuditRequest) wire.AuditPage {
	tb.Helper()
	return answer[wire.AuditPage](tb, nc, "tokens.query.audit", req)
}

func familyViewOf(tb testing.TB, nc *nats.Conn, familyID string) wire.FamilyView {
	tb.Helper()
	return answer[wire.FamilyView](tb, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: familyID})
}

func eraseSubject(tb testing.TB, nc *nats.Conn, subject string) api.SubjectErased {
	tb.Helper()
	return answer[api.SubjectErased](tb, nc, "tokens.admin.subjects.erase",
		api.SubjectEraseRequest{Subject: subject, Reason: "DSR-2026-0042", By: "dpo"})
}

// scanDir returns the files under dir holding any of needles, and how
// many files it read.
func scanDir(tb testing.TB, dir string, needles ...string) (found map[string][]string, files int) {
	tb.Helper()
	found = map[string][]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		for _, n := range needles {
			if bytes.Contains(data, []byte(n)) {
				found[n] = append(found[n], strings.TrimPrefix(path, dir))
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return found, files
}

// subjectKeys opens the subjects' key bucket over nc.
func subjectKeys(t *testing.T, nc *nats.Conn) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), pii.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// waitFor polls cond until it holds, failing after a generous bound.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("still waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestErasureLeavesNoPersonalDataInTheDataDir: with personal data
// protection on, a subject's identifier, IP and user agent are readable
// through the API and nowhere in clear in the data directory (stream
// blocks, key bucket, SQLite and its WAL, the log at debug level); after
// the subject's erasure they are not readable through the API either,
// which shows the structure of its events with the personal fields
// marked erased, while another subject's stay readable. A read model
// rebuilt from the stream after the erasure stays redacted.
func TestErasureLeavesNoPersonalDataInTheDataDir(t *testing.T) {
	cfg := testConfig(t)
	cfg.PIIKeyFile = piiKeyFile(t)
	logs, err := os.Create(filepath.Join(cfg.DataDir, "tokend.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	app := MustApp(t, cfg, logs)
	nc := eventstest.MustConnect(t, app.NATSURL())

	alice := issueWith(t, nc, erasedSubject, erasedIP, erasedUA)
	rotated := call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: alice.RefreshToken, ClientID: "web",
		Context: map[string]string{"ip": erasedIP, "user_agent": erasedUA}})
	if rotated.errCode != "" {
		t.Fatalf("refresh: %s", rotated.raw)
	}
	second := issueWith(t, nc, erasedSubject, erasedIP, erasedUA)
	bob := issueWith(t, nc, keptSubject, keptIP, "KeptAgent/1.0")

	// Readable through the API.
	page := auditPageOf(t, nc, wire.AuditRequest{Subject: erasedSubject, MinSeq: bob.Seq})
	if len(page.Events) != 3 {
		t.Fatalf("audit by subject before erasure: %d events, want 3: %+v", len(page.Events), page.Events)
	}
	for _, e := range page.Events {
		if e.Subject != erasedSubject || e.Erased || !strings.Contains(string(e.Context), erasedIP) || !strings.Contains(string(e.Context), erasedUA) {
			t.Fatalf("before erasure the audit shows the subject and its context: %+v (context %s)", e, e.Context)
		}
	}
	if f := familyViewOf(t, nc, alice.FamilyID); f.Subject != erasedSubject || f.Erased {
		t.Fatalf("family before erasure: %+v", f)
	}
	// The scan reads what tokend wrote: the family ids (not personal)
	// are in the stream's blocks and the read model.
	waitFor(t, "the family ids in the data dir's files", func() bool {
		found, _ := scanDir(t, cfg.DataDir, alice.FamilyID, bob.FamilyID)
		return len(found[alice.FamilyID]) >= 2 && len(found[bob.FamilyID]) >= 2
	})
	personal := []string{erasedSubject, erasedIP, erasedUA, keptSubject, keptIP}
	if found, n := scanDir(t, cfg.DataDir, personal...); len(found) > 0 {
		t.Fatalf("personal data in clear in the data dir (%d files) before erasure: %v", n, found)
	}

	erased := eraseSubject(t, nc, erasedSubject)
	if erased.RevokedFamilies != 2 || !strings.HasPrefix(erased.Pseudonym, "p:") {
		t.Fatalf("erase: %+v, want 2 families revoked and a pseudonym", erased)
	}
	checkErased := func(nc *nats.Conn, want int) {
		t.Helper()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		page := auditPageOf(t, nc, wire.AuditRequest{Subject: erasedSubject, MinSeq: lastEventSeq(t, js)})
		if len(page.Events) != want {
			t.Fatalf("audit by subject after erasure: %d events, want %d: %+v", len(page.Events), want, page.Events)
		}
		for _, e := range page.Events {
			if !e.Erased || e.Subject != erased.Pseudonym || string(e.Context) != "{}" || e.FamilyID == "" || e.Type == "" {
				t.Fatalf("after erasure an event keeps its structure and loses its personal fields: %+v (context %s)", e, e.Context)
			}
		}
		if byPseudonym := auditPageOf(t, nc, wire.AuditRequest{Subject: erased.Pseudonym}); len(byPseudonym.Events) != want {
			t.Fatalf("audit by the pseudonym: %d events, want %d", len(byPseudonym.Events), want)
		}
		for _, id := range []string{alice.FamilyID, second.FamilyID} {
			if f := familyViewOf(t, nc, id); !f.Erased || f.Subject != erased.Pseudonym || f.Status != "revoked" {
				t.Fatalf("family %s after erasure: %+v", id, f)
			}
		}
		kept := auditPageOf(t, nc, wire.AuditRequest{Subject: keptSubject})
		if len(kept.Events) != 1 || kept.Events[0].Erased || !strings.Contains(string(kept.Events[0].Context), keptIP) {
			t.Fatalf("another subject's events stay readable: %+v", kept.Events)
		}
	}
	// issued, rotated, issued, and the erasure's two family.revoked.
	checkErased(nc, 5)
	// Erasing again, by the subject or by the pseudonym (after a restore
	// of the key bucket), revokes nothing more and changes nothing.
	for _, req := range []api.SubjectEraseRequest{{Subject: erasedSubject}, {Pseudonym: erased.Pseudonym}} {
		req.Reason, req.By = "DSR-2026-0042", "dpo"
		r := call(t, nc, "tokens.admin.subjects.erase", req)
		var again api.SubjectErased
		if err := json.Unmarshal(r.raw, &again); err != nil || r.errCode != "" || again.RevokedFamilies != 0 || again.Pseudonym != erased.Pseudonym {
			t.Fatalf("erase %+v again: %s", req, r.raw)
		}
	}
	checkErased(nc, 5)
	// A token of the erased subject presented again is refused, and the
	// refusal records no personal data: the key is not created again.
	wantError(t, call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: rotated.token.RefreshToken, ClientID: "web",
		Context: map[string]string{"ip": erasedIP, "user_agent": erasedUA}}), "invalid_grant")

	app.Stop()
	if found, n := scanDir(t, cfg.DataDir, erasedSubject, erasedIP, erasedUA); len(found) > 0 {
		t.Fatalf("the erased subject's data in the data dir (%d files): %v", n, found)
	}

	// A read model rebuilt from the stream stays redacted.
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Remove(filepath.Join(cfg.DataDir, "projections.db"+suffix)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	app = MustApp(t, cfg, logs)
	nc = eventstest.MustConnect(t, app.NATSURL())
	checkErased(nc, 6) // and the refused refresh's refresh.rejected
	if found, n := scanDir(t, cfg.DataDir, erasedSubject, erasedIP, erasedUA); len(found) > 0 {
		t.Fatalf("the erased subject's data in the data dir after the rebuild (%d files): %v", n, found)
	}
}

// auditAt reads app's own read model, through its audit listener:
// unlike a NATS request, which any instance may answer.
func auditAt(tb testing.TB, app *App, subject string, minSeq uint64) wire.AuditPage {
	tb.Helper()
	path := fmt.Sprintf("/v1/audit?subject=%s&min_seq=%d", url.QueryEscape(subject), minSeq)
	code, _, body := auditGet(tb, auditClient(nil), app, path, testAuditToken)
	if code != http.StatusOK {
		tb.Fatalf("GET %s: %d %s", path, code, body)
	}
	var page wire.AuditPage
	if err := json.Unmarshal(body, &page); err != nil {
		tb.Fatal(err)
	}
	return page
}

// TestErasureOnOneInstanceRedactsTheOthers: instances share the key
// bucket; an erasure on one redacts the other's answers (its cached key
// is dropped when the bucket's purge reaches it), and the subject can be
// issued for again afterwards, under a new key.
func TestErasureOnOneInstanceRedactsTheOthers(t *testing.T) {
	key := piiKeyFile(t)
	_, apps := mustInstances(t, 2, func(c *Config) { c.PIIKeyFile = key })
	nc := eventstest.MustConnect(t, apps[0].NATSURL())
	issued := issueWith(t, nc, erasedSubject, erasedIP, erasedUA)
	// Each instance reads (and caches) the subject's key to answer.
	for _, app := range apps {
		page := auditAt(t, app, erasedSubject, issued.Seq)
		if len(page.Events) != 1 || page.Events[0].Subject != erasedSubject || page.Events[0].Erased {
			t.Fatalf("before erasure: %+v", page.Events)
		}
	}
	erased := eraseSubject(t, nc, erasedSubject)
	for i, app := range apps {
		waitFor(t, fmt.Sprintf("instance %d to redact the erased subject", i), func() bool {
			page := auditAt(t, app, erasedSubject, erased.Seq)
			return len(page.Events) == 2 && page.Events[0].Erased && page.Events[1].Erased &&
				page.Events[0].Subject == erased.Pseudonym && string(page.Events[0].Context) == "{}"
		})
	}
	again := issueWith(t, nc, erasedSubject, erasedIP, erasedUA)
	for _, app := range apps {
		page := auditAt(t, app, erasedSubject, again.Seq)
		last := page.Events[len(page.Events)-1]
		if last.FamilyID != again.FamilyID || last.Subject != erasedSubject || last.Erased {
			t.Fatalf("a family issued after the erasure is readable, the erased ones are not: %+v", page.Events)
		}
	}
}

// TestContextRetentionExpiresContextsOnly: with --pii-context-retention,
// an event's context (IP, user agent) becomes unreadable once its period
// key expires, while the subject and the rest of the event stay.
func TestContextRetentionExpiresContextsOnly(t *testing.T) {
	cfg := testConfig(t)
	cfg.PIIKeyFile = piiKeyFile(t)
	cfg.PIIContextRetention = time.Second
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	issued := issueWith(t, nc, erasedSubject, erasedIP, erasedUA)
	page := auditPageOf(t, nc, wire.AuditRequest{FamilyID: issued.FamilyID, MinSeq: issued.Seq})
	if len(page.Events) != 1 || !strings.Contains(string(page.Events[0].Context), erasedIP) || page.Events[0].ContextExpired {
		t.Fatalf("within the retention the context is readable: %+v", page.Events)
	}
	waitFor(t, "the context to expire", func() bool {
		e := auditPageOf(t, nc, wire.AuditRequest{FamilyID: issued.FamilyID}).Events[0]
		return e.ContextExpired
	})
	e := auditPageOf(t, nc, wire.AuditRequest{FamilyID: issued.FamilyID}).Events[0]
	if string(e.Context) != "{}" || e.Subject != erasedSubject || e.Erased || e.Type != "token.issued" {
		t.Fatalf("past the retention only the context is gone: %+v (context %s)", e, e.Context)
	}
	// A refresh now records a context readable again, under a new period.
	r := call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: issued.RefreshToken, ClientID: "web",
		Context: map[string]string{"ip": keptIP}})
	if r.errCode != "" {
		t.Fatalf("refresh: %s", r.raw)
	}
	page = auditPageOf(t, nc, wire.AuditRequest{FamilyID: issued.FamilyID, MinSeq: r.token.Seq})
	if last := page.Events[len(page.Events)-1]; !strings.Contains(string(last.Context), keptIP) || last.ContextExpired {
		t.Fatalf("a new event's context is readable: %+v", last)
	}
}

// TestLostSubjectKeyEndsTheFamily: a live family whose subject's key is
// gone (the key bucket lost, say) is never used again: its next refresh
// revokes it (subject_erased) and is refused, rather than minting tokens
// whose subject would be the pseudonym.
func TestLostSubjectKeyEndsTheFamily(t *testing.T) {
	key := piiKeyFile(t)
	url, apps := mustInstances(t, 1, func(c *Config) { c.PIIKeyFile = key })
	nc := eventstest.MustConnect(t, url)
	issued := issueWith(t, nc, erasedSubject, erasedIP, erasedUA)
	pseudonym := familyEvents(t, nc, issued.FamilyID)[0].Subject
	kv := subjectKeys(t, nc)
	if err := kv.Purge(t.Context(), strings.TrimPrefix(pseudonym, "p:")); err != nil {
		t.Fatal(err)
	}
	apps[0].Stop() // and with it the family it cached
	cfg := testConfig(t)
	cfg.NATSURL, cfg.PIIKeyFile = url, key
	MustApp(t, cfg, nil)

	wantError(t, call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: issued.RefreshToken, ClientID: "web"}), "invalid_grant")
	evs := familyEvents(t, nc, issued.FamilyID)
	last := evs[len(evs)-1]
	if last.Type != "family.revoked" || last.Reason != "subject_erased" || last.Subject != pseudonym || len(last.Context) > 0 {
		t.Fatalf("the refresh revokes the family, naming no one: %+v", last.Envelope)
	}
	r := call(t, nc, "tokens.query.introspect", wire.IntrospectRequest{RefreshToken: issued.RefreshToken})
	if !strings.Contains(string(r.raw), `"active":false`) {
		t.Fatalf("introspection: %s", r.raw)
	}
}

// TestProtectionOverEventsInClear: events written before --pii-key-file
// stay readable; a live family in clear comes under protection with its
// next event; an erasure revokes it and shreds what was sealed, but
// cannot shred the events in clear; and a token of the subject's family
// revoked in clear, presented after the erasure, brings no key back.
func TestProtectionOverEventsInClear(t *testing.T) {
	cfg := testConfig(t)
	app := MustApp(t, cfg, nil)
	nc := eventstest.MustConnect(t, app.NATSURL())
	live := issueWith(t, nc, erasedSubject, erasedIP, erasedUA)
	dead := issueWith(t, nc, erasedSubject, erasedIP, erasedUA)
	if r := call(t, nc, "tokens.cmd.revoke", wire.RevokeRequest{FamilyID: &dead.FamilyID}); r.errCode != "" {
		t.Fatalf("revoke: %s", r.raw)
	}
	app.Stop()

	cfg.PIIKeyFile = piiKeyFile(t)
	app = MustApp(t, cfg, nil)
	nc = eventstest.MustConnect(t, app.NATSURL())
	page := auditPageOf(t, nc, wire.AuditRequest{Subject: erasedSubject})
	if len(page.Events) != 3 || page.Events[0].Subject != erasedSubject || !strings.Contains(string(page.Events[0].Context), erasedIP) {
		t.Fatalf("events in clear stay readable: %+v", page.Events)
	}
	rotated := call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: live.RefreshToken, ClientID: "web",
		Context: map[string]string{"ip": erasedIP}})
	if rotated.errCode != "" {
		t.Fatalf("refresh: %s", rotated.raw)
	}
	evs := familyEvents(t, nc, live.FamilyID)
	if last := evs[len(evs)-1]; last.PII == "" || !strings.HasPrefix(last.Subject, "p:") {
		t.Fatalf("the live family's next event is sealed: %+v", last.Envelope)
	}

	erased := eraseSubject(t, nc, erasedSubject)
	if erased.RevokedFamilies != 1 {
		t.Fatalf("erase: %+v, want the live family revoked", erased)
	}
	wantError(t, call(t, nc, "tokens.cmd.refresh", wire.RefreshRequest{RefreshToken: dead.RefreshToken, ClientID: "web",
		Context: map[string]string{"ip": erasedIP}}), "invalid_grant")
	evs = familyEvents(t, nc, dead.FamilyID)
	if last := evs[len(evs)-1]; last.Type != "refresh.rejected" || last.Subject != erased.Pseudonym || last.PII != "1" || len(last.Context) > 0 {
		t.Fatalf("the refusal after the erasure names no one: %+v", last.Envelope)
	}
	kv := subjectKeys(t, nc)
	if _, err := kv.Get(t.Context(), strings.TrimPrefix(erased.Pseudonym, "p:")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("the erased subject's key is back: %v", err)
	}
	page = auditPageOf(t, nc, wire.AuditRequest{Subject: erasedSubject, MinSeq: erased.Seq})
	for _, e := range page.Events {
		clear := e.Type == "token.issued" || e.FamilyID == dead.FamilyID && e.Type == "family.revoked"
		if clear != (e.Subject == erasedSubject) || clear == e.Erased {
			t.Fatalf("after the erasure, only the events written in clear show the subject: %+v", page.Events)
		}
	}
}
