package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/tokens"
)

// startRegistry runs tokend's client administration (the real endpoints
// and registry) on an in-process JetStream server and returns its URL and
// the registry.
func startRegistry(t *testing.T) (string, *registry.Registry) {
	t.Helper()
	url := eventstest.MustJetStream(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	js, _ := jetstream.New(nc)
	reg, err := registry.Open(context.Background(), js, 1, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Stop)
	ks := keys.NewKeyset(time.Now())
	codec, err := ks.Codec()
	if err != nil {
		t.Fatal(err)
	}
	access, err := api.NewAccessTokens(ks, "https://tokend.example", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	s := &api.Service{Tokens: tokens.NewService(nil, codec, domain.Policy{}, time.Now), Clients: reg, Access: access,
		Log: slog.New(slog.DiscardHandler), Now: time.Now}
	if err := s.Start(nc, "tokens"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return url, reg
}

var secretLine = regexp.MustCompile(`client_secret: ([A-Za-z0-9_-]{43})\n`)

// shownSecret returns the secret printed by add, update or rotate-secret.
func shownSecret(t *testing.T, out string) string {
	t.Helper()
	m := secretLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no secret shown in %q", out)
	}
	return m[1]
}

// asUser makes $USER name, and the account nameless, so name is the
// default of --by for the rest of the test.
func asUser(t *testing.T, name string) {
	getenv = func(k string) string {
		if k == "USER" {
			return name
		}
		return os.Getenv(k)
	}
	old := accountName
	accountName = func() string { return "" }
	t.Cleanup(func() { getenv, accountName = os.Getenv, old })
}

// TestClientsByDefaultsToTheAccount: without $USER (a container, say) the
// account's name is recorded.
func TestClientsByDefaultsToTheAccount(t *testing.T) {
	asUser(t, "")
	accountName = func() string { return "root" }
	if got := operator(); got != "root" {
		t.Fatalf("operator() = %q", got)
	}
}

func mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	r := runCtl(t, "", args...)
	if r.code != 0 {
		t.Fatalf("tokenctl %q: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func TestClientsLifecycle(t *testing.T) {
	url, reg := startRegistry(t)
	asUser(t, "dana")
	ctl := func(args ...string) string { return mustCtl(t, append([]string{"--nats-url", url}, args...)...) }

	out := ctl("clients", "add", "web-app", "--type", "confidential", "--scope", "openid api:read", "--scope", "profile",
		"--audience", "https://api.example.com", "--on-replay", "revoke_subject", "--by", "alice")
	secret := shownSecret(t, out)
	if !strings.Contains(out, "registered client web-app (revision ") || !strings.Contains(out, "auth_method:          client_secret_basic") {
		t.Fatalf("add printed\n%s", out)
	}
	c, ok := reg.Lookup("web-app")
	if !ok || !c.VerifySecret(secret, time.Now()) || strings.Join(c.Scopes, " ") != "openid api:read profile" || c.OnReplay != domain.ReplayRevokeSubject {
		t.Fatalf("registered %+v", c)
	}

	// update changes what it is told and keeps the rest, the secret included.
	out = ctl("clients", "update", "web-app", "--scope", "openid", "--access-ttl", "2m", "--by", "bob")
	if secretLine.MatchString(out) || !strings.Contains(out, "updated client web-app") {
		t.Fatalf("update printed\n%s", out)
	}
	c, _ = reg.Lookup("web-app")
	if strings.Join(c.Scopes, " ") != "openid" || c.AccessTTL != 2*time.Minute || len(c.Audiences) != 1 || c.OnReplay != domain.ReplayRevokeSubject ||
		!c.VerifySecret(secret, time.Now()) {
		t.Fatalf("updated %+v", c)
	}

	// rotate-secret --save: the new secret goes to the file only.
	file := filepath.Join(t.TempDir(), "web-app.secret")
	out = ctl("clients", "rotate-secret", "web-app", "--grace", "1h", "--save", file)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	next := strings.TrimSpace(string(data))
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o600 {
		t.Fatalf("--save wrote mode %v", st.Mode().Perm())
	}
	if strings.Contains(out, next) || !strings.Contains(out, "client_secret: written to "+file) {
		t.Fatalf("rotate-secret --save printed\n%s", out)
	}
	c, _ = reg.Lookup("web-app")
	now := time.Now()
	if !c.VerifySecret(next, now) || !c.VerifySecret(secret, now) || c.VerifySecret(secret, now.Add(time.Hour+time.Minute)) {
		t.Fatal("after rotate-secret --grace 1h: the new secret verifies, the old one for an hour")
	}

	if out = ctl("clients", "show", "web-app"); !strings.Contains(out, "secret 1:") || !strings.Contains(out, "stops verifying") ||
		!strings.Contains(out, "access_ttl:           2m0s") || !strings.Contains(out, "refresh_idle_ttl:     tokend's default") {
		t.Fatalf("show printed\n%s", out)
	}
	if out = ctl("clients", "list"); !regexp.MustCompile(`web-app\s+confidential\s+client_secret_basic\s+openid\s+https://api.example.com\s+2\s`).MatchString(out) {
		t.Fatalf("list printed\n%s", out)
	}
	var shown api.ClientView
	if err := json.Unmarshal([]byte(ctl("--json", "clients", "show", "web-app")), &shown); err != nil || len(shown.Secrets) != 2 {
		t.Fatalf("show --json: %+v, %v", shown, err)
	}

	ctl("clients", "remove", "web-app", "--by", "carol")
	if _, ok := reg.Lookup("web-app"); ok {
		t.Fatal("removed, but still registered")
	}
	out = ctl("clients", "history", "web-app")
	for _, want := range []string{`create\s+\S+ \S+\s+alice`, `update\s+\S+ \S+\s+bob`, `rotate_secret\s+\S+ \S+\s+dana`, `remove\s+\S+ \S+\s+carol\s+-\s+\(removed\)`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Fatalf("history lacks %s:\n%s", want, out)
		}
	}

	// A secret never shows up where it should not: every reply carries
	// times, never hashes.
	for _, s := range []string{secret, next} {
		if h := domain.HashClientSecret(s); strings.Contains(ctl("--json", "clients", "history", "web-app"), h) {
			t.Fatal("history shows a secret hash")
		}
	}
}

func TestClientsJSONAndMethods(t *testing.T) {
	url, reg := startRegistry(t)
	ctl := func(args ...string) string {
		return mustCtl(t, append([]string{"--nats-url", url, "--json"}, args...)...)
	}

	// --json: the reply as received, with the secret first.
	var added struct {
		ClientSecret string `json:"client_secret"`
		api.ClientChangeView
	}
	if err := json.Unmarshal([]byte(ctl("clients", "add", "svc", "--type", "confidential", "--auth-method", "client_secret_post", "--by", "alice")), &added); err != nil {
		t.Fatal(err)
	}
	if c, _ := reg.Lookup("svc"); added.Action != "create" || !c.VerifySecret(added.ClientSecret, time.Now()) || len(c.Scopes) != 0 {
		t.Fatalf("add --json: %+v", added)
	}

	// A public client has no secret; moving it to confidential makes one.
	out := ctl("clients", "add", "spa", "--type", "public", "--scope", "openid", "--by", "alice")
	if strings.Contains(out, "client_secret") {
		t.Fatalf("a public client got a secret: %s", out)
	}
	if err := json.Unmarshal([]byte(ctl("clients", "update", "spa", "--type", "confidential", "--by", "alice")), &added); err != nil {
		t.Fatal(err)
	}
	if c, _ := reg.Lookup("spa"); c.AuthMethod != domain.AuthSecretBasic || !c.VerifySecret(added.ClientSecret, time.Now()) {
		t.Fatalf("public to confidential: %+v", c)
	}

	// private_key_jwt: public keys from a file; the secret goes.
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	os.WriteFile(jwks, []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`), 0o644)
	out = ctl("clients", "update", "spa", "--auth-method", "private_key_jwt", "--jwks", jwks, "--by", "alice")
	if c, _ := reg.Lookup("spa"); c.AuthMethod != domain.AuthPrivateKeyJWT || c.Secrets != nil || strings.Contains(out, "client_secret") {
		t.Fatalf("to private_key_jwt: %+v\n%s", c, out)
	}
	// ...and back to a secret method: a new secret, the keys dropped.
	if err := json.Unmarshal([]byte(ctl("clients", "update", "spa", "--auth-method", "client_secret_basic", "--by", "alice")), &added); err != nil {
		t.Fatal(err)
	}
	if c, _ := reg.Lookup("spa"); c.JWKS != nil || !c.VerifySecret(added.ClientSecret, time.Now()) {
		t.Fatalf("back to client_secret_basic: %+v", c)
	}
}

func TestClientsFailures(t *testing.T) {
	url, _ := startRegistry(t)
	asUser(t, "dana")
	mustCtl(t, "--nats-url", url, "clients", "add", "web", "--type", "public", "--by", "alice")

	r := runCtl(t, "", "--nats-url", url, "clients", "add", "web", "--type", "public", "--by", "alice")
	if r.code != 1 || !strings.Contains(r.stderr, "is registered") {
		t.Fatalf("adding twice: %+v", r)
	}
	r = runCtl(t, "", "--nats-url", url, "--json", "clients", "show", "nobody")
	if r.code != 1 || !strings.Contains(r.stdout, `"error":"not_found"`) {
		t.Fatalf("show of an unknown client: %+v", r)
	}
	r = runCtl(t, "", "--nats-url", url, "clients", "add", "bad", "--type", "confidential", "--scope", `api"read`, "--by", "alice")
	if r.code != 1 || !strings.Contains(r.stderr, "invalid_request") || !strings.Contains(r.stderr, "scopes") {
		t.Fatalf("an invalid scope: %+v", r)
	}

	// A refused rotation leaves no file behind.
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	r = runCtl(t, "", "--nats-url", url, "clients", "rotate-secret", "web", "--save", file)
	if r.code != 1 || !strings.Contains(r.stderr, "no secret") {
		t.Fatalf("rotating the secret of a public client: %+v", r)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files left behind: %v", entries)
	}
	r = runCtl(t, "", "--nats-url", url, "clients", "update", "web", "--save", file, "--by", "alice")
	if r.code != 2 || !strings.Contains(r.stderr, "makes no secret") {
		t.Fatalf("--save on an update that makes no secret: %+v", r)
	}
}

// TestClientsSaveWritesANewFileOnly: --save puts the secret in a new 0600
// file instead of on stdout, and never replaces an existing file (which
// may hold a secret in use): such a change is refused before it is made.
func TestClientsSaveWritesANewFileOnly(t *testing.T) {
	url, reg := startRegistry(t)
	file := filepath.Join(t.TempDir(), "web-app.secret")
	out := mustCtl(t, "--nats-url", url, "clients", "add", "web-app", "--type", "confidential", "--by", "alice", "--save", file)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimSpace(string(data))
	if c, ok := reg.Lookup("web-app"); !ok || !c.VerifySecret(secret, time.Now()) {
		t.Fatalf("the saved secret does not verify: %+v", c)
	}
	if st, _ := os.Stat(file); st.Mode().Perm() != 0o600 {
		t.Fatalf("--save wrote mode %v", st.Mode().Perm())
	}
	if strings.Contains(out, secret) || !strings.Contains(out, "client_secret: written to "+file) {
		t.Fatalf("add --save printed\n%s", out)
	}
	other := filepath.Join(filepath.Dir(file), "other.secret")
	if out := mustCtl(t, "--nats-url", url, "--json", "clients", "add", "other", "--type", "confidential", "--by", "alice", "--save", other); strings.Contains(out, `"client_secret":`) {
		t.Fatalf("add --json --save printed\n%s", out)
	}

	for _, args := range [][]string{
		{"clients", "add", "third", "--type", "confidential", "--by", "alice", "--save", file},
		{"clients", "rotate-secret", "web-app", "--by", "alice", "--save", file},
	} {
		r := runCtl(t, "", append([]string{"--nats-url", url}, args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, file+" exists") {
			t.Errorf("%v over an existing file: %+v", args, r)
		}
	}
	if data, _ := os.ReadFile(file); strings.TrimSpace(string(data)) != secret {
		t.Fatalf("the saved secret was replaced by %q", data)
	}
	if _, ok := reg.Lookup("third"); ok {
		t.Error("a refused --save registered the client anyway")
	}
	if c, _ := reg.Lookup("web-app"); len(c.Secrets) != 1 {
		t.Errorf("a refused --save rotated the secret anyway: %d secrets", len(c.Secrets))
	}
	if entries, _ := os.ReadDir(filepath.Dir(file)); len(entries) != 2 {
		t.Errorf("files left behind: %v", entries)
	}
}

// TestStagedSecretNeverReplacesAFile: a file that appears at the path
// while the change is being made is kept; the commit fails instead.
func TestStagedSecretNeverReplacesAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web-app.secret")
	commit, _, err := stageSecretFile(path, "new\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := commit(); err == nil {
		t.Fatal("commit replaced a file that appeared meanwhile")
	}
	if data, _ := os.ReadFile(path); string(data) != "old\n" {
		t.Fatalf("the file holds %q", data)
	}
}

func TestClientsUsageErrors(t *testing.T) {
	asUser(t, "")
	for _, args := range [][]string{
		{"clients"},
		{"clients", "frobnicate"},
		{"clients", "list", "web"},
		{"clients", "show"},
		{"clients", "history"},
		{"clients", "add", "web", "--by", "a"},
		{"clients", "add", "web", "--type", "public"},
		{"clients", "add", "web", "--type", "public", "--by", "a", "--save", "f"},
		{"clients", "add", "web", "--type", "confidential", "--by", "a", "--save", ""},
		{"clients", "add", "web", "--type", "confidential", "--by", "a", "--grace", "1h"},
		{"clients", "add", "web", "--type", "confidential", "--by", "a", "--access-ttl", "soon"},
		{"clients", "add", "web", "--type", "confidential", "--by", "a", "--jwks", "/nonexistent.json"},
		{"clients", "show", "web", "--scope", "openid"},
		{"clients", "show", "web", "--by", "a"},
		{"clients", "list", "--save", "f"},
		{"clients", "remove", "web"},
		{"clients", "rotate-secret", "web", "--type", "public", "--by", "a"},
		{"clients", "rotate-secret", "web", "--grace", "x", "--by", "a"},
		{"clients", "a", "b", "c"},
	} {
		r := runCtl(t, "", append([]string{"--nats-url", deadURL}, args...)...)
		if r.code != 2 || r.stderr == "" || r.stdout != "" {
			t.Errorf("tokenctl %q: exit %d, want 2 with a message on stderr only (stdout %q, stderr %q)", args, r.code, r.stdout, r.stderr)
		}
	}
	notJSON := filepath.Join(t.TempDir(), "jwks.json")
	os.WriteFile(notJSON, []byte("{"), 0o600)
	if r := runCtl(t, "", "--nats-url", deadURL, "clients", "add", "web", "--type", "confidential", "--by", "a", "--jwks", notJSON); r.code != 2 {
		t.Errorf("--jwks with a file that is not JSON: %+v", r)
	}
}

// TestClientsResourceServer: --resource registers the audiences a client
// may introspect access tokens for; update keeps them unless told.
func TestClientsResourceServer(t *testing.T) {
	url, reg := startRegistry(t)
	ctl := func(args ...string) string {
		return mustCtl(t, append([]string{"--nats-url", url}, append(args, "--by", "alice")...)...)
	}
	out := ctl("clients", "add", "api-gw", "--type", "confidential", "--resource", "https://api.example.com https://billing.example.com")
	if !regexp.MustCompile(`resources:\s+https://api.example.com https://billing.example.com`).MatchString(out) {
		t.Fatalf("add printed\n%s", out)
	}
	ctl("clients", "update", "api-gw", "--scope", "openid")
	if c, _ := reg.Lookup("api-gw"); strings.Join(c.Resources, " ") != "https://api.example.com https://billing.example.com" {
		t.Fatalf("update without --resource: resources %q", c.Resources)
	}
	ctl("clients", "update", "api-gw", "--resource", "")
	if c, _ := reg.Lookup("api-gw"); len(c.Resources) != 0 {
		t.Fatalf("update --resource '': resources %q", c.Resources)
	}
	if r := runCtl(t, "", "--nats-url", url, "clients", "add", "spa", "--type", "public", "--resource", "https://api.example.com", "--by", "alice"); r.code == 0 ||
		!strings.Contains(r.stderr, "resources go with confidential clients") {
		t.Fatalf("a public resource server: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestClientsSSFReceiver: --ssf-receiver makes a confidential client an
// SSF receiver, shown by show and list; update keeps it unless told, and
// an empty --ssf-receiver ends it.
func TestClientsSSFReceiver(t *testing.T) {
	url, reg := startRegistry(t)
	ctl := func(args ...string) string {
		return mustCtl(t, append([]string{"--nats-url", url}, append(args, "--by", "alice")...)...)
	}
	out := ctl("clients", "add", "siem", "--type", "confidential", "--ssf-receiver", "all")
	if !regexp.MustCompile(`ssf_receiver:\s+all\n`).MatchString(out) {
		t.Fatalf("add printed\n%s", out)
	}
	if c, _ := reg.Lookup("siem"); c.Receiver != domain.ReceiverAll {
		t.Fatalf("registered %+v", c)
	}
	ctl("clients", "update", "siem", "--scope", "openid")
	if c, _ := reg.Lookup("siem"); c.Receiver != domain.ReceiverAll {
		t.Fatalf("update without --ssf-receiver: %q", c.Receiver)
	}
	ctl("clients", "update", "siem", "--ssf-receiver", "own")
	if out = mustCtl(t, "--nats-url", url, "clients", "show", "siem"); !regexp.MustCompile(`ssf_receiver:\s+own\n`).MatchString(out) {
		t.Fatalf("show printed\n%s", out)
	}
	ctl("clients", "add", "web", "--type", "confidential")
	out = mustCtl(t, "--nats-url", url, "clients", "list")
	if !regexp.MustCompile(`(?m)SSF_RECEIVER\n`).MatchString(out) || !regexp.MustCompile(`(?m)^siem\s.*\sown\n`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^web\s.*\s-\n`).MatchString(out) {
		t.Fatalf("list printed\n%s", out)
	}
	ctl("clients", "update", "siem", "--ssf-receiver", "")
	if c, _ := reg.Lookup("siem"); c.IsReceiver() {
		t.Fatalf("update --ssf-receiver '': %q", c.Receiver)
	}
	if r := runCtl(t, "", "--nats-url", url, "clients", "add", "spa", "--type", "public", "--ssf-receiver", "own", "--by", "alice"); r.code == 0 ||
		!strings.Contains(r.stderr, "ssf_receiver goes with confidential clients") {
		t.Fatalf("a public receiver: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCtl(t, "", "--nats-url", url, "clients", "show", "siem", "--ssf-receiver", "all"); r.code == 0 || !strings.Contains(r.stderr, "--ssf-receiver goes with add or update") {
		t.Fatalf("show --ssf-receiver: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestClientsDPoP: --dpop-bound and --dpop-nonce register RFC 9449's
// settings, show prints them, and update keeps them unless told.
func TestClientsDPoP(t *testing.T) {
	url, reg := startRegistry(t)
	ctl := func(args ...string) string {
		return mustCtl(t, append([]string{"--nats-url", url}, append(args, "--by", "alice")...)...)
	}
	out := ctl("clients", "add", "spa", "--type", "public", "--dpop-bound", "--dpop-nonce")
	if !regexp.MustCompile(`dpop:\s+families bound to a key \(dpop_bound_access_tokens\), nonce required\n`).MatchString(out) {
		t.Fatalf("add printed\n%s", out)
	}
	ctl("clients", "update", "spa", "--scope", "openid")
	if c, _ := reg.Lookup("spa"); !c.DPoPBound || !c.DPoPRequireNonce {
		t.Fatalf("update without the flags: %+v", c)
	}
	ctl("clients", "update", "spa", "--dpop-nonce=false")
	if c, _ := reg.Lookup("spa"); !c.DPoPBound || c.DPoPRequireNonce {
		t.Fatalf("update --dpop-nonce=false: %+v", c)
	}
	if out = ctl("clients", "update", "spa", "--dpop-bound=false"); strings.Contains(out, "dpop:") {
		t.Fatalf("a client without DPoP settings shows them:\n%s", out)
	}
}
