package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/events/eventstest"
)

const (
	testAccess  = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIiwidHlwIjoiYXQrand0In0.payload.signature"
	testRefresh = "rt1.fam-7f3a.secret"
	// tokenReply is spaced oddly on purpose: --json must pass it through as is.
	tokenReply = `{"refresh_token":"` + testRefresh + `", "family_id":"fam-7f3a","token_type":"Bearer","access_token":"` +
		testAccess + `","expires_in":300,"scope":"openid api:read","refresh_token_expires_at":"2026-12-06T10:00:00Z","seq":42}`
)

// fake is an in-process NATS server with a stand-in for tokend that records
// the requests it gets.
type fake struct {
	url string
	mu  sync.Mutex
	got map[string][][]byte // subject -> request bodies, oldest first
}

// request returns the last request on subject, decoded.
func (f *fake) request(subject string) map[string]any {
	all := f.requests(subject)
	if len(all) == 0 {
		return nil
	}
	return all[len(all)-1]
}

// requests returns every request on subject, decoded, oldest first.
func (f *fake) requests(subject string) []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]map[string]any, len(f.got[subject]))
	for i, body := range f.got[subject] {
		_ = json.Unmarshal(body, &out[i])
	}
	return out
}

// startFake answers tokens.* subjects: replies maps a subject to its success
// body; errors maps a subject to a contract error body sent like tokend does.
func startFake(t *testing.T, replies map[string]string, errs map[string]string) *fake {
	t.Helper()
	handlers := map[string]micro.HandlerFunc{}
	for subject, body := range replies {
		handlers[subject] = func(r micro.Request) { _ = r.Respond([]byte(body)) }
	}
	for subject, body := range errs {
		handlers[subject] = func(r micro.Request) { respondError(r, "400", body) }
	}
	return serveFake(t, handlers)
}

// respondError answers like tokend: the contract body plus the micro headers.
func respondError(r micro.Request, status, body string) {
	var e struct {
		Description string `json:"error_description"`
	}
	_ = json.Unmarshal([]byte(body), &e)
	_ = r.Error(status, e.Description, []byte(body))
}

// serveFake answers each subject of handlers with its handler.
func serveFake(t *testing.T, handlers map[string]micro.HandlerFunc) *fake {
	t.Helper()
	f := &fake{url: eventstest.MustServer(t).ClientURL(), got: map[string][][]byte{}}
	nc := eventstest.MustConnect(t, f.url)
	svc, err := micro.AddService(nc, micro.Config{Name: "tokens", Version: "0.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	add := func(subject string, h micro.HandlerFunc) {
		name := strings.ReplaceAll(subject, ".", "_")
		if err := svc.AddEndpoint(name, micro.HandlerFunc(func(r micro.Request) {
			f.mu.Lock()
			f.got[r.Subject()] = append(f.got[r.Subject()], append([]byte(nil), r.Data()...))
			f.mu.Unlock()
			h(r)
		}), micro.WithEndpointSubject(subject)); err != nil {
			t.Fatal(err)
		}
	}
	for subject, h := range handlers {
		add(subject, h)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

type result struct {
	code           int
	stdout, stderr string
}

func runCtl(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

// deadURL is a NATS URL nothing listens on: usage errors must not need NATS.
const deadURL = "nats://127.0.0.1:1"

// TestVersion: --version, before or after a command, prints the version
// and exits 0 without connecting or running the command.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{
		{"--version"},
		{"--nats-url", deadURL, "--version"},
		{"--nats-url", deadURL, "revoke", "--subject", "user-42", "--version"},
	} {
		r := runCtl(t, "", args...)
		if want := api.VersionLine("tokenctl") + "\n"; r.code != 0 || r.stdout != want || !strings.HasPrefix(r.stdout, "tokenctl "+api.Version+" ") || r.stderr != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 0 and %q", args, r.code, r.stdout, r.stderr, want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--nats-url", deadURL},
		{"--bogus"},
		{"--timeout", "0", "keys"},
		{"--nats-url", deadURL, "frobnicate"},
		{"--nats-url", deadURL, "issue"},
		{"--nats-url", deadURL, "issue", "--subject", "u"},
		{"--nats-url", deadURL, "issue", "--client-id", "c"},
		{"--nats-url", deadURL, "issue", "--subject", "u", "--client-id", "c", "extra"},
		{"--nats-url", deadURL, "issue", "--subject"},
		{"--nats-url", deadURL, "issue", "--nope"},
		{"--nats-url", deadURL, "refresh", "--client-id", "c"},
		{"--nats-url", deadURL, "refresh", "--token", "t"},
		{"--nats-url", deadURL, "revoke"},
		{"--nats-url", deadURL, "revoke", "--family", "f", "--subject", "s"},
		{"--nats-url", deadURL, "revoke", "--family", ""},
		{"--nats-url", deadURL, "help", "frobnicate"},
		{"--nats-url", deadURL, "--tls-cert", "c.pem", "keys"},
		{"--nats-url", deadURL, "--nkey", "/nonexistent.nk", "keys"},
		{"--nats-url", deadURL, "introspect"},
		{"--nats-url", deadURL, "introspect", "tok"},
		{"--nats-url", deadURL, "introspect", "--token", "t", "--min-seq", "-1"},
		{"--nats-url", deadURL, "family"},
		{"--nats-url", deadURL, "family", ""},
		{"--nats-url", deadURL, "family", "a", "b"},
		{"--nats-url", deadURL, "family", "--min-seq", "x", "a"},
		{"--nats-url", deadURL, "audit", "--limit", "0"},
		{"--nats-url", deadURL, "audit", "--limit", "1001"},
		{"--nats-url", deadURL, "audit", "--since", "yesterday"},
		{"--nats-url", deadURL, "audit", "--until", "2026-01-02"},
		{"--nats-url", deadURL, "audit", "--since", "-1h"},
		{"--nats-url", deadURL, "audit", "--type", "token.stolen"},
		{"--nats-url", deadURL, "audit", "--family", ""},
		{"--nats-url", deadURL, "audit", "--client-id", ""},
		{"--nats-url", deadURL, "audit", "--presented-by", ""},
		{"--nats-url", deadURL, "audit", "extra"},
		{"--nats-url", deadURL, "rebuild"},
	} {
		r := runCtl(t, "", args...)
		if r.code != 2 {
			t.Errorf("tokenctl %q: exit %d, want 2 (stdout %q, stderr %q)", args, r.code, r.stdout, r.stderr)
		}
		if r.stderr == "" || r.stdout != "" {
			t.Errorf("tokenctl %q: want a message on stderr only; stdout %q, stderr %q", args, r.stdout, r.stderr)
		}
	}
}

func TestStdinTokenErrors(t *testing.T) {
	for _, stdin := range []string{"", "  \n", "a b\n"} {
		r := runCtl(t, stdin, "--nats-url", deadURL, "refresh", "--client-id", "c", "--token", "-")
		if r.code != 2 || !strings.Contains(r.stderr, "stdin") {
			t.Errorf("stdin %q: exit %d, stderr %q", stdin, r.code, r.stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	r := runCtl(t, "", "help")
	if r.code != 0 {
		t.Fatalf("help: exit %d", r.code)
	}
	for _, want := range []string{"issue", "refresh", "revoke", "keys", "introspect", "family", "audit", "rebuild",
		"--nats-url", "--json", "--timeout", "--prefix"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("help lacks %q:\n%s", want, r.stdout)
		}
	}
	// The benchmark is its own command, tokenbench: not an operator's.
	if strings.Contains(r.stdout, "bench") {
		t.Errorf("help lists bench:\n%s", r.stdout)
	}
	if r := runCtl(t, "", "--nats-url", deadURL, "bench"); r.code != 2 || !strings.Contains(r.stderr, `unknown command "bench"`) {
		t.Errorf("bench: exit %d, stderr %q; want an unknown command", r.code, r.stderr)
	}
	if r := runCtl(t, "", "-h"); r.code != 0 || !strings.Contains(r.stdout, "Commands:") {
		t.Errorf("-h: exit %d, stdout %q", r.code, r.stdout)
	}
	for _, args := range [][]string{{"refresh", "-h"}, {"help", "refresh"}, {"refresh", "--help"}} {
		r := runCtl(t, "", args...)
		if r.code != 0 || !strings.Contains(r.stdout, "--token") || !strings.Contains(r.stdout, "stdin") {
			t.Errorf("%q: exit %d, stdout %q", args, r.code, r.stdout)
		}
	}
	r = runCtl(t, "", "issue", "-h")
	if r.code != 0 || !strings.Contains(r.stdout, "--audience URL") || !strings.Contains(r.stdout, "--subject S") {
		t.Errorf("issue -h: exit %d, stdout %q", r.code, r.stdout)
	}
	for cmd, wants := range map[string][]string{
		"introspect": {"Usage: tokenctl [global flags] introspect --token T|-", "--min-seq N"},
		"family":     {"Usage: tokenctl [global flags] family ID", "--min-seq N", "audit --family ID --all --json"},
		"audit": {"--type T", "--since T", "--limit N", "(default \"100\")", "--after-seq N", "--all", "--follow",
			"token.replay_detected", "7d", "JSON Lines"},
		"rebuild": {"--db PATH", "must not exist", "Ctrl-C"},
	} {
		r := runCtl(t, "", cmd, "-h")
		for _, want := range wants {
			if r.code != 0 || !strings.Contains(r.stdout, want) {
				t.Errorf("%s -h: exit %d, lacks %q:\n%s", cmd, r.code, want, r.stdout)
			}
		}
	}
}

func TestIssueHuman(t *testing.T) {
	f := startFake(t, map[string]string{"tokens.cmd.issue": tokenReply}, nil)
	r := runCtl(t, "", "--nats-url", f.url, "issue", "--subject", "user-42", "--client-id", "web-app",
		"--scope", "openid api:read", "--audience", "https://a.example", "--audience", "https://b.example",
		"--ip", "203.0.113.7", "--user-agent", "curl/8")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	for _, want := range []string{"family:          fam-7f3a\n", "refresh_token:   " + testRefresh + "\n",
		"access_token:    " + testAccess[:24] + "…\n", "scope:           openid api:read\n",
		"expires_in:      300s\n", "refresh expires: ", "seq:             42\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, testAccess) {
		t.Errorf("human output shows the whole access token:\n%s", r.stdout)
	}
	req := f.request("tokens.cmd.issue")
	if req["subject"] != "user-42" || req["client_id"] != "web-app" || req["scope"] != "openid api:read" {
		t.Errorf("request = %v", req)
	}
	if aud, _ := req["audience"].([]any); len(aud) != 2 || aud[1] != "https://b.example" {
		t.Errorf("audience = %v", req["audience"])
	}
	if c, _ := req["context"].(map[string]any); c["ip"] != "203.0.113.7" || c["user_agent"] != "curl/8" {
		t.Errorf("context = %v", req["context"])
	}
}

func TestJSONPassThrough(t *testing.T) {
	f := startFake(t, map[string]string{"tokens.cmd.issue": tokenReply}, nil)
	for _, args := range [][]string{
		{"--nats-url", f.url, "--json", "issue", "--subject", "u", "--client-id", "c"},
		{"--nats-url", f.url, "issue", "--subject", "u", "--client-id", "c", "--json"},
	} {
		r := runCtl(t, "", args...)
		if r.code != 0 || r.stdout != tokenReply+"\n" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
}

func TestRefreshFromStdin(t *testing.T) {
	f := startFake(t, map[string]string{"tokens.cmd.refresh": tokenReply}, nil)
	r := runCtl(t, testRefresh+"\n", "--nats-url", f.url, "refresh", "--token", "-", "--client-id", "web-app")
	if r.code != 0 || !strings.Contains(r.stdout, "fam-7f3a") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	req := f.request("tokens.cmd.refresh")
	if req["refresh_token"] != testRefresh || req["client_id"] != "web-app" {
		t.Errorf("request = %v", req)
	}
	if req["scope"] != nil {
		t.Errorf("scope = %#v, want it absent without --scope", req["scope"])
	}

	r = runCtl(t, "", "--nats-url", f.url, "refresh", "--token", "x", "--client-id", "c", "--scope", "", "--audience", "https://a")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	req = f.request("tokens.cmd.refresh")
	if req["scope"] != "" || req["audience"] != "https://a" {
		t.Errorf("request = %v", req)
	}
}

func TestSaveKeepsTheNewToken(t *testing.T) {
	f := startFake(t, map[string]string{"tokens.cmd.issue": tokenReply, "tokens.cmd.refresh": tokenReply}, nil)
	path := filepath.Join(t.TempDir(), "rt.txt")
	r := runCtl(t, "", "--nats-url", f.url, "issue", "--subject", "u", "--client-id", "c", "--save", path)
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	data, err := os.ReadFile(path)
	if err != nil || string(data) != testRefresh+"\n" {
		t.Fatalf("saved %q, %v", data, err)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600: the file holds a secret", info.Mode().Perm())
	}
	if strings.Contains(r.stdout, testRefresh) || !strings.Contains(r.stdout, "written to "+path) || !strings.Contains(r.stdout, "fam-7f3a") {
		t.Fatalf("with --save the refresh token goes to the file only; stdout:\n%s", r.stdout)
	}
	// Reading the token from the file it is saved to, as the README's tour does.
	if err := os.WriteFile(path, []byte("rt1.previous\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r = runCtl(t, string(in), "--nats-url", f.url, "--json", "refresh", "--token", "-", "--client-id", "c", "--save", path)
	if r.code != 0 || f.request("tokens.cmd.refresh")["refresh_token"] != "rt1.previous" {
		t.Fatalf("exit %d, stderr %q, request %v", r.code, r.stderr, f.request("tokens.cmd.refresh"))
	}
	if data, _ := os.ReadFile(path); string(data) != testRefresh+"\n" {
		t.Fatalf("after refresh the file holds %q", data)
	}
	var printed map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &printed); err != nil || printed["refresh_token"] != nil || printed["family_id"] != "fam-7f3a" || printed["seq"] != 42.0 {
		t.Fatalf("--json --save printed %q (%v): the reply without refresh_token", r.stdout, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}

	r = runCtl(t, "", "--nats-url", f.url, "issue", "--subject", "u", "--client-id", "c", "--save", filepath.Join(path, "not-a-dir", "x"))
	if r.code != 1 || !strings.Contains(r.stdout, testRefresh) || !strings.Contains(r.stderr, "--save") {
		t.Fatalf("a failed save must still show the new token: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestRevoke(t *testing.T) {
	f := startFake(t, map[string]string{"tokens.cmd.revoke": `{"revoked_families":1,"seq":43}`}, nil)
	r := runCtl(t, "", "--nats-url", f.url, "revoke", "--family", "fam-7f3a", "--reason", "compromised")
	if r.code != 0 || r.stdout != "revoked_families: 1\nseq:              43\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	req := f.request("tokens.cmd.revoke")
	if req["family_id"] != "fam-7f3a" || req["reason"] != "compromised" || req["refresh_token"] != nil || req["subject"] != nil {
		t.Errorf("request = %v", req)
	}
	r = runCtl(t, "tok\n", "--nats-url", f.url, "--json", "revoke", "--token", "-")
	if r.code != 0 || r.stdout != `{"revoked_families":1,"seq":43}`+"\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if req := f.request("tokens.cmd.revoke"); req["refresh_token"] != "tok" || req["family_id"] != nil {
		t.Errorf("request = %v", req)
	}
	r = runCtl(t, "", "--nats-url", f.url, "revoke", "--client-id", "web-app")
	if req := f.request("tokens.cmd.revoke"); r.code != 0 || req["client_id"] != "web-app" {
		t.Errorf("exit %d, request = %v", r.code, req)
	}
}

func TestServiceError(t *testing.T) {
	body := `{"error":"invalid_grant","error_description":"refresh token is not valid"}`
	f := startFake(t, nil, map[string]string{"tokens.cmd.refresh": body})
	r := runCtl(t, "", "--nats-url", f.url, "refresh", "--token", "x", "--client-id", "c")
	if r.code != 1 || r.stderr != "tokenctl: invalid_grant: refresh token is not valid\n" || r.stdout != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCtl(t, "", "--nats-url", f.url, "--json", "refresh", "--token", "x", "--client-id", "c")
	if r.code != 1 || r.stdout != body+"\n" || !strings.Contains(r.stderr, "invalid_grant") {
		t.Fatalf("--json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestNoResponders(t *testing.T) {
	f := startFake(t, nil, nil)
	r := runCtl(t, "", "--nats-url", f.url, "--prefix", "elsewhere", "keys")
	if r.code != 1 || !strings.Contains(r.stderr, "no responders") || !strings.Contains(r.stderr, "elsewhere.keys") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestConnectFailure(t *testing.T) {
	r := runCtl(t, "", "--nats-url", deadURL, "--timeout", "2s", "keys")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "tokenctl: connect to "+deadURL) {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestKeys(t *testing.T) {
	jwks := `{"keys":[{"kty":"OKP","kid":"k1"}]}`
	f := startFake(t, map[string]string{"tokens.keys": jwks}, nil)
	r := runCtl(t, "", "--nats-url", f.url, "keys")
	if r.code != 0 || !strings.Contains(r.stdout, "\n  \"keys\": [") || !strings.Contains(r.stdout, `"kid": "k1"`) {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if r := runCtl(t, "", "--nats-url", f.url, "--json", "keys"); r.stdout != jwks+"\n" {
		t.Fatalf("--json: stdout %q", r.stdout)
	}
}

// TestGlobalFlagsAfterTheCommand: --nats-url, --json and the others work
// after the command as before it.
func TestGlobalFlagsAfterTheCommand(t *testing.T) {
	f := startFake(t, map[string]string{"tokens.cmd.revoke": `{"revoked_families":1,"seq":9}`}, nil)
	for _, args := range [][]string{
		{"--nats-url", f.url, "--json", "revoke", "--family", "fam-1"},
		{"revoke", "--family", "fam-1", "--nats-url", f.url, "--json"},
		{"revoke", "--nats-url", f.url, "--family", "fam-1", "--timeout", "5s", "--json"},
	} {
		r := runCtl(t, "", args...)
		if r.code != 0 || strings.TrimSpace(r.stdout) != `{"revoked_families":1,"seq":9}` {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}
	if r := runCtl(t, "", "revoke", "--family", "f", "--timeout", "0s"); r.code != 2 {
		t.Fatalf("--timeout 0 after the command: exit %d", r.code)
	}
	// A command's usage lists its own flags, not the globals it accepts.
	r := runCtl(t, "", "revoke", "-h")
	if r.code != 0 || strings.Contains(r.stdout, "--nats-url URL") || !strings.Contains(r.stdout, "--subject") {
		t.Fatalf("revoke -h: %s", r.stdout)
	}
}

// TestAuditToken: the token printed is admitted by the line printed, read
// the way tokend reads its --audit-tokens file.
func TestAuditToken(t *testing.T) {
	r := runCtl(t, "", "--json", "audit-token", "--name", "soc-team")
	var out struct {
		Token          string `json:"token"`
		TokensFileLine string `json:"tokens_file_line"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil || r.code != 0 {
		t.Fatalf("exit %d, stdout %q: %v", r.code, r.stdout, err)
	}
	tokens, err := api.ReadAuditTokens(strings.NewReader(out.TokensFileLine + "\n"))
	if err != nil || len(tokens) != 1 || tokens[sha256.Sum256([]byte(out.Token))] != "soc-team" {
		t.Fatalf("the line %q does not admit the token: %v", out.TokensFileLine, err)
	}
	if strings.Contains(out.TokensFileLine, out.Token) || len(out.Token) < 40 {
		t.Fatalf("token %q, line %q", out.Token, out.TokensFileLine)
	}
	if again := runCtl(t, "", "--json", "audit-token", "--name", "soc-team"); again.stdout == r.stdout {
		t.Fatal("two runs made the same token")
	}
	// With --save the token is in the file only.
	saved := filepath.Join(t.TempDir(), "siem.token")
	r = runCtl(t, "", "audit-token", "--name", "siem", "--save", saved)
	written, err := os.ReadFile(saved)
	if err != nil || r.code != 0 {
		t.Fatalf("--save: exit %d, %v", r.code, err)
	}
	if token := strings.TrimSpace(string(written)); len(token) < 40 || strings.Contains(r.stdout+r.stderr, token) {
		t.Fatalf("--save printed the token it wrote:\n%s%s", r.stdout, r.stderr)
	}
	for _, bad := range []string{"", "two words"} {
		if r := runCtl(t, "", "audit-token", "--name", bad); r.code != 2 {
			t.Fatalf("--name %q: exit %d", bad, r.code)
		}
	}
}

func TestDefaultURLFromEnv(t *testing.T) {
	env := map[string]string{}
	old := getenv
	getenv = func(k string) string { return env[k] }
	t.Cleanup(func() { getenv = old })
	if got := defaultURL(); got != defaultNATSURL {
		t.Errorf("no env: %q", got)
	}
	env["NATS_URL"] = "nats://a:4222"
	if got := defaultURL(); got != "nats://a:4222" {
		t.Errorf("NATS_URL: %q", got)
	}
	env["TOKENCTL_NATS_URL"] = "nats://b:4222"
	if got := defaultURL(); got != "nats://b:4222" {
		t.Errorf("TOKENCTL_NATS_URL: %q", got)
	}

	f := startFake(t, map[string]string{"tokens.keys": `{"keys":[]}`}, nil)
	env["TOKENCTL_NATS_URL"] = f.url
	if r := runCtl(t, "", "keys"); r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}
