package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/events/eventstest"
)

func TestSubjectsUsageErrors(t *testing.T) {
	asUser(t, "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"subjects"}, "want: subjects erase SUBJECT --reason R"},
		{[]string{"subjects", "frobnicate", "alice"}, `unknown subcommand "frobnicate": want erase`},
		{[]string{"subjects", "erase"}, "erase needs the subject"},
		{[]string{"subjects", "erase", "", "--reason", "DSR-1", "--by", "dpo"}, "erase needs the subject"},
		{[]string{"subjects", "erase", "alice", "--by", "dpo"}, "--reason is required"},
		{[]string{"subjects", "erase", "alice", "--reason", "DSR-1"}, "--by is required"},
		{[]string{"subjects", "erase", "alice", "bob", "--reason", "DSR-1", "--by", "dpo"}, `unexpected argument "bob"`},
		{[]string{"subjects", "erase", "alice", "--reason"}, "reason"},
	} {
		r := runCtl(t, "", append([]string{"--nats-url", deadURL}, c.args...)...)
		if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, c.want) {
			t.Errorf("tokenctl %q: exit %d, stdout %q, stderr %q; want exit 2 and %q on stderr", c.args, r.code, r.stdout, r.stderr, c.want)
		}
	}
}

// tokendBinary builds tokend for the tests that run it.
func tokendBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tokend")
	if out, err := exec.Command("go", "build", "-o", bin, "../tokend").CombinedOutput(); err != nil {
		t.Fatalf("go build tokend: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// runTokend runs bin with its own data directory and ports, and extra
// flags, until the test ends; it returns its NATS URL once it is ready.
func runTokend(t *testing.T, bin string, extra ...string) string {
	t.Helper()
	natsAddr, httpAddr := freeAddr(t), freeAddr(t)
	logs := filepath.Join(t.TempDir(), "tokend.log")
	out, err := os.Create(logs)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(bin, append([]string{"--data-dir", t.TempDir(), "--nats-listen", natsAddr, "--http", httpAddr}, extra...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	eventstest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		select {
		case err := <-exited:
			exited <- err
			b, _ := os.ReadFile(logs)
			t.Fatalf("tokend exited before it was ready: %v\n%s", err, b)
		default:
		}
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	})
	return "nats://" + natsAddr
}

var erasedLine = regexp.MustCompile(`^erased: (\d+) families revoked \(seq (\d+)\); the subject is (p:[A-Za-z0-9_-]{22}) from now on\n$`)

// TestSubjectsEraseAgainstTokend runs subjects erase against tokend
// processes: with --pii-key-file it revokes the subject's families and
// says so, in a line and as the reply's JSON; without, it fails with an
// error that names the flag.
func TestSubjectsEraseAgainstTokend(t *testing.T) {
	bin := tokendBinary(t)
	issue := func(url, subject string) wire.TokenReply {
		t.Helper()
		var r wire.TokenReply
		out := mustCtl(t, "--nats-url", url, "--json", "issue", "--subject", subject, "--client-id", "web",
			"--ip", "198.51.100.77", "--user-agent", "ErasureProbe/4.2")
		if err := json.Unmarshal([]byte(out), &r); err != nil || r.FamilyID == "" {
			t.Fatalf("issue: %q: %v", out, err)
		}
		return r
	}

	t.Run("with --pii-key-file", func(t *testing.T) {
		keyFile := filepath.Join(t.TempDir(), "pii.key")
		if err := os.WriteFile(keyFile, []byte(rand.Text()+rand.Text()), 0o600); err != nil {
			t.Fatal(err)
		}
		url := runTokend(t, bin, "--pii-key-file", keyFile)
		const subject = "alice.ctl-test@example.org"
		fams := []wire.TokenReply{issue(url, subject), issue(url, subject)}
		kept := issue(url, "bob.ctl-test@example.org")

		out := mustCtl(t, "--nats-url", url, "subjects", "erase", subject, "--reason", "DSR-2026-7", "--by", "dpo")
		m := erasedLine.FindStringSubmatch(out)
		if m == nil || m[1] != "2" {
			t.Fatalf("subjects erase printed %q; want %s with 2 families revoked", out, erasedLine)
		}
		pseudonym := m[3]
		if seq, _ := strconv.ParseUint(m[2], 10, 64); seq < kept.Seq {
			t.Errorf("erase seq %d is before the last issue's %d", seq, kept.Seq)
		}
		// "--": a family id may begin with "-".
		for _, f := range fams {
			var view wire.FamilyView
			out := mustCtl(t, "--nats-url", url, "--json", "family", "--min-seq", m[2], "--", f.FamilyID)
			if err := json.Unmarshal([]byte(out), &view); err != nil {
				t.Fatal(err)
			}
			if view.Status != "revoked" || !view.Erased || view.Subject != pseudonym {
				t.Errorf("family %s after the erasure: status %s, erased %v, subject %q; want revoked, erased, %s",
					f.FamilyID, view.Status, view.Erased, view.Subject, pseudonym)
			}
		}
		// The tables say so.
		if out := mustCtl(t, "--nats-url", url, "family", "--", fams[0].FamilyID); !strings.Contains(out, pseudonym+" (erased)") {
			t.Errorf("tokenctl family after the erasure:\n%s", out)
		}
		if out := mustCtl(t, "--nats-url", url, "audit", "--subject", subject); strings.Count(out, pseudonym+" (erased)") < 4 {
			t.Errorf("tokenctl audit after the erasure:\n%s", out)
		}
		var view wire.FamilyView
		if err := json.Unmarshal([]byte(mustCtl(t, "--nats-url", url, "--json", "family", "--", kept.FamilyID)), &view); err != nil {
			t.Fatal(err)
		}
		if view.Status != "active" || view.Erased || view.Subject != "bob.ctl-test@example.org" {
			t.Errorf("another subject's family: %+v", view)
		}

		// Again, with --json: the reply as received; nothing left to revoke.
		r := runCtl(t, "", "--nats-url", url, "--json", "subjects", "erase", subject, "--reason", "DSR-2026-7", "--by", "dpo")
		var again api.SubjectErased
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &again) != nil {
			t.Fatalf("--json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
		if again.Pseudonym != pseudonym || again.RevokedFamilies != 0 || again.Seq == 0 {
			t.Errorf("--json after the erasure: %+v; want pseudonym %s and nothing revoked", again, pseudonym)
		}
		if !strings.HasPrefix(r.stdout, `{"pseudonym":"`+pseudonym+`"`) || !strings.HasSuffix(r.stdout, "}\n") {
			t.Errorf("--json prints the reply as received: %q", r.stdout)
		}
	})

	t.Run("without --pii-key-file", func(t *testing.T) {
		url := runTokend(t, bin)
		issue(url, "alice.ctl-test@example.org")
		r := runCtl(t, "", "--nats-url", url, "subjects", "erase", "alice.ctl-test@example.org", "--reason", "DSR-2026-7", "--by", "dpo")
		if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "--pii-key-file") || !strings.Contains(r.stderr, "invalid_request") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and an error naming --pii-key-file", r.code, r.stdout, r.stderr)
		}
	})
}
