package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
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

func auditOf(tb testing.TB, nc *nats.Conn, req wire.AuditRequest) wire.AuditPage {
	tb.Helper()
	r := call(tb, nc, "tokens.query.audit", req)
	if r.errCode != "" {
		tb.Fatalf("audit: %s", r.raw)
	}
	var page wire.AuditPage
	if err := json.Unmarshal(r.raw, &page); err != nil {
		tb.Fatal(err)
	}
	return page
}

func familyOf(tb testing.TB, nc *nats.Conn, familyID string) wire.FamilyView {
	tb.Helper()
	r := call(tb, nc, "tokens.query.family", wire.FamilyRequest{FamilyID: familyID})
	if r.errCode != "" {
		tb.Fatalf("family: %s", r.raw)
	}
	var v wire.FamilyView
	if err := json.Unmarshal(r.raw, &v); err != nil {
		tb.Fatal(err)
	}
	return v
}

func eraseSubject(tb testing.TB, nc *nats.Conn, subject string) api.SubjectErased {
	tb.Helper()
	r := call(tb, nc, "tokens.admin.subjects.erase", api.SubjectEraseRequest{Subject: subject, Reason: "DSR-2026-0042", By: "dpo"})
	if r.errCode != "" {
		tb.Fatalf("erase: %s", r.raw)
	}
	var out api.SubjectErased
	if err := json.Unmarshal(r.raw, &out); err != nil {
		tb.Fatal(err)
	}
	return out
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
	page := auditOf(t, nc, wire.AuditRequest{Subject: erasedSubject, MinSeq: bob.Seq})
	if len(page.Events) != 3 {
		t.Fatalf("audit by subject before erasure: %d events, want 3: %+v", len(page.Events), page.Events)
	}
	for _, e := range page.Events {
		if e.Subject != erasedSubject || e.Erased || !strings.Contains(string(e.Context), erasedIP) || !strings.Contains(string(e.Context), erasedUA) {
			t.Fatalf("before erasure the audit shows the subject and its context: %+v (context %s)", e, e.Context)
		}
	}
	if f := familyOf(t, nc, alice.FamilyID); f.Subject != erasedSubject || f.Erased {
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
	checkErased := func(nc *nats.Conn) {
		t.Helper()
		page := auditOf(t, nc, wire.AuditRequest{Subject: erasedSubject, MinSeq: erased.Seq})
		// issued, rotated, issued, and the erasure's two family.revoked.
		if len(page.Events) != 5 {
			t.Fatalf("audit by subject after erasure: %d events, want 5: %+v", len(page.Events), page.Events)
		}
		for _, e := range page.Events {
			if !e.Erased || e.Subject != erased.Pseudonym || string(e.Context) != "{}" || e.FamilyID == "" || e.Type == "" {
				t.Fatalf("after erasure an event keeps its structure and loses its personal fields: %+v (context %s)", e, e.Context)
			}
		}
		if byPseudonym := auditOf(t, nc, wire.AuditRequest{Subject: erased.Pseudonym}); len(byPseudonym.Events) != 5 {
			t.Fatalf("audit by the pseudonym: %d events, want 5", len(byPseudonym.Events))
		}
		for _, id := range []string{alice.FamilyID, second.FamilyID} {
			if f := familyOf(t, nc, id); !f.Erased || f.Subject != erased.Pseudonym || f.Status != "revoked" {
				t.Fatalf("family %s after erasure: %+v", id, f)
			}
		}
		kept := auditOf(t, nc, wire.AuditRequest{Subject: keptSubject})
		if len(kept.Events) != 1 || kept.Events[0].Erased || !strings.Contains(string(kept.Events[0].Context), keptIP) {
			t.Fatalf("another subject's events stay readable: %+v", kept.Events)
		}
	}
	checkErased(nc)
	// A token of the erased subject presented again records no personal
	// data, and creates no key again.
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
	checkErased(nc)
}

// TestErasureOnOneInstanceRedactsTheOthers: two instances share the key
// bucket; an erasure on one redacts the other's answers (its cached key
// is dropped when the bucket's purge reaches it), and the subject can be
// issued for again afterwards, under a new key.
func TestErasureOnOneInstanceRedactsTheOthers(t *testing.T) {
	key := piiKeyFile(t)
	url, apps := mustInstances(t, 2, func(c *Config) { c.PIIKeyFile = key })
	ncA := eventstest.MustConnect(t, apps[0].NATSURL())
	_ = url
	issued := issueWith(t, ncA, erasedSubject, erasedIP, erasedUA)
	// Instance B reads (and caches) the subject's key while answering.
	ncB := eventstest.MustConnect(t, apps[1].NATSURL())
	subB := "tokens." // both instances answer on the same subjects; pin B by its own connection to the server
	_ = subB
	waitFor(t, "instance B to show the subject", func() bool {
		page := auditB(t, apps[1], erasedSubject, issued.Seq)
		return len(page.Events) == 1 && page.Events[0].Subject == erasedSubject
	})
	erased := eraseSubject(t, ncA, erasedSubject)
	waitFor(t, "instance B to redact the erased subject", func() bool {
		page := auditB(t, apps[1], erasedSubject, erased.Seq)
		return len(page.Events) == 2 && page.Events[0].Erased && page.Events[1].Erased
	})
	_ = ncB
	again := issueWith(t, ncA, erasedSubject, erasedIP, erasedUA)
	page := auditOf(t, ncA, wire.AuditRequest{FamilyID: again.FamilyID, MinSeq: again.Seq})
	if len(page.Events) != 1 || page.Events[0].Subject != erasedSubject || page.Events[0].Erased {
		t.Fatalf("a family issued after the erasure is readable: %+v", page.Events)
	}
}
