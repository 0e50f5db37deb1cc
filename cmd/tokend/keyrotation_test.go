package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/events/eventstest"
)

// buildTokenctl builds the operator CLI, for running it as an operator would.
func buildTokenctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tokenctl")
	if out, err := exec.Command("go", "build", "-o", bin, "../tokenctl").CombinedOutput(); err != nil {
		t.Fatalf("go build tokenctl: %v\n%s", err, out)
	}
	return bin
}

// rotatedKeys is what tokenctl keys rotate --json prints: the promote reply.
type rotatedKeys struct {
	Revision uint64 `json:"revision"`
	Keys     []struct {
		Kid, Kind, State string
	} `json:"keys"`
}

func (r rotatedKeys) current(kind string) string {
	for _, k := range r.Keys {
		if k.Kind == kind && k.State == "current" {
			return k.Kid
		}
	}
	return ""
}

// refreshKeyID is the MAC key id of a refresh token: its 4th field.
func refreshKeyID(token string) string {
	if parts := strings.Split(token, "."); len(parts) == 6 {
		return parts[3]
	}
	return ""
}

func accessKeyID(t *testing.T, token string) string {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Headers[0].KeyID
}

// exchange is one refresh of the load.
type exchange struct {
	refreshToken, accessToken string
	afterRotation             bool // sent after tokenctl keys rotate returned
}

// TestKeyRotationUnderLoad rotates the keys with tokenctl while refreshes
// over many families go through two instances: no valid token is refused,
// what is minted afterwards carries the new keys, and what was minted before
// still works.
func TestKeyRotationUnderLoad(t *testing.T) {
	natsURL, apps := mustInstances(t, 2, func(c *Config) {
		c.ReuseInterval = 10 * time.Minute // outlasts the test: retries across the rotation are inside it
		c.RefreshRate = 0
	})
	bin := buildTokenctl(t)
	conns := []*nats.Conn{eventstest.MustConnect(t, natsURL), eventstest.MustConnect(t, natsURL)}
	before := initialKeys(t, conns[0])

	const families, retries, idle = 16, 8, 4
	loaded := make([]string, families)
	for i := range loaded {
		loaded[i] = mustIssue(t, conns[i%2], fmt.Sprintf("user-%d", i), "web-app").RefreshToken
	}
	idleTokens := make([]string, idle) // issued before the rotation, first refreshed after it
	for i := range idleTokens {
		idleTokens[i] = mustIssue(t, conns[i%2], "user-idle", "web-app").RefreshToken
	}
	type pair struct{ parent, child string }
	rotatedBefore := make([]pair, retries) // parents rotated before the rotation, presented again after it
	for i := range rotatedBefore {
		p := mustIssue(t, conns[i%2], "user-retry", "web-app").RefreshToken
		rotatedBefore[i] = pair{p, mustRefresh(t, conns[i%2], p, "web-app").RefreshToken}
	}

	var (
		mu        sync.Mutex
		exchanges []exchange
		failures  []string
		total     atomic.Int64
		after     atomic.Int64
		rotated   atomic.Bool
		stop      = make(chan struct{})
		wg        sync.WaitGroup
	)
	for i := range families {
		wg.Add(1)
		go func() {
			defer wg.Done()
			token := loaded[i]
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				wasRotated := rotated.Load()
				r := refresh(t, conns[(i+n)%2], token, "web-app")
				mu.Lock()
				if r.errCode != "" {
					failures = append(failures, string(r.raw))
					mu.Unlock()
					return
				}
				exchanges = append(exchanges, exchange{r.token.RefreshToken, r.token.AccessToken, wasRotated})
				mu.Unlock()
				token = r.token.RefreshToken
				total.Add(1)
				if wasRotated {
					after.Add(1)
				}
			}
		}()
	}
	eventstest.CheckFor(t, time.Minute, 10*time.Millisecond, func() error {
		if n := total.Load(); n < 3*families {
			return fmt.Errorf("%d refreshes before the rotation", n)
		}
		return nil
	})

	out, err := exec.Command(bin, "--nats-url", natsURL, "--timeout", "30s", "--json",
		"keys", "rotate", "--publish-for", "0", "--instances", "2").Output()
	if err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("tokenctl keys rotate: %v\n%s", err, out)
	}
	rotated.Store(true)
	var keys rotatedKeys
	if err := json.Unmarshal(out, &keys); err != nil {
		t.Fatalf("rotate output %q: %v", out, err)
	}
	newMAC, newSigning := keys.current("mac"), keys.current("signing")
	if newMAC == "" || newSigning == "" || newMAC == before.mac || newSigning == before.signing {
		t.Fatalf("rotated to mac %q, signing %q (from %+v)", newMAC, newSigning, before)
	}
	eventstest.CheckFor(t, time.Minute, 10*time.Millisecond, func() error {
		if n := after.Load(); n < 3*families {
			return fmt.Errorf("%d refreshes after the rotation", n)
		}
		return nil
	})
	close(stop)
	wg.Wait()

	if len(failures) > 0 {
		t.Fatalf("%d refreshes refused, e.g. %s", len(failures), failures[0])
	}
	for i, app := range apps {
		if app.api.Handled() == 0 {
			t.Fatalf("instance %d handled nothing: the load did not go through both", i)
		}
	}
	// Both instances serve the same JWKS after the rotation, and it verifies
	// every access token, signed before the rotation or after.
	status, _, jwks := httpGet(t, apps[0], "/.well-known/jwks.json")
	if _, _, other := httpGet(t, apps[1], "/.well-known/jwks.json"); status != 200 || string(other) != string(jwks) {
		t.Fatalf("JWKS after the rotation: %d %s, other instance %s", status, jwks, other)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(jwks, &set); err != nil {
		t.Fatal(err)
	}
	oldMinted := 0
	for _, x := range exchanges {
		macKey, signingKey := refreshKeyID(x.refreshToken), accessKeyID(t, x.accessToken)
		if x.afterRotation && (macKey != newMAC || signingKey != newSigning) {
			t.Fatalf("minted after the rotation under mac key %s and signing key %s, want %s and %s", macKey, signingKey, newMAC, newSigning)
		}
		if macKey == before.mac {
			oldMinted++
		}
		verifyAccessToken(t, set, x.accessToken)
	}
	if oldMinted == 0 {
		t.Fatal("no refresh of the load ran before the rotation")
	}

	// Tokens minted before the rotation and left alone still refresh.
	for i, tok := range idleTokens {
		if refreshKeyID(tok) != before.mac {
			t.Fatalf("idle token %d under %s", i, refreshKeyID(tok))
		}
		if r := mustRefresh(t, conns[i%2], tok, "web-app"); refreshKeyID(r.RefreshToken) != newMAC {
			t.Fatalf("child of an idle token minted under %s", refreshKeyID(r.RefreshToken))
		}
	}
	// A parent rotated before the rotation and presented again inside the
	// reuse interval gets the very child it got then, from whichever
	// instance answers.
	for i, p := range rotatedBefore {
		for _, nc := range conns {
			if got := mustRefresh(t, nc, p.parent, "web-app").RefreshToken; got != p.child {
				t.Fatalf("retry %d across the rotation got another child (under %s, first under %s)", i, refreshKeyID(got), refreshKeyID(p.child))
			}
		}
		mustRefresh(t, conns[i%2], p.child, "web-app")
		loaded = append(loaded, p.parent)
	}
	for _, tok := range append(loaded, idleTokens...) {
		c := countTypes(familyEvents(t, conns[0], mustFamilyOf(t, tok)))
		if c["family.revoked"]+c["token.replay_detected"]+c["refresh.rejected"] != 0 || c["token.rotated"] == 0 {
			t.Fatalf("a family's events across the rotation: %v", c)
		}
	}
}

// TestKeyRotationWithRoleCredentials: on the shipped NATS configuration
// the admin role rotates keys with tokenctl, tokend's own permissions cover
// watching the keys and serving the admin subjects (mustSecureDeployment
// fails the test on any violation of tokend's), and other roles may not
// touch key administration.
func TestKeyRotationWithRoleCredentials(t *testing.T) {
	d := mustSecureDeployment(t)
	bin := buildTokenctl(t)
	tokenctl := func(role, timeout string, args ...string) (stdout, stderr string, err error) {
		base := []string{"--nats-url", d.url, "--tls-ca", d.ca, "--nkey", d.seeds[role], "--inbox-prefix", "_INBOX_" + role, "--timeout", timeout}
		cmd := exec.Command(bin, append(base, args...)...)
		var errOut strings.Builder
		cmd.Stderr = &errOut
		out, err := cmd.Output()
		return string(out), errOut.String(), err
	}
	issuer, _ := d.connect(t, "issuer")
	var issued struct {
		RefreshToken string `json:"refresh_token"`
	}
	json.Unmarshal(allowed(t, issuer, "tokens.cmd.issue", map[string]string{"subject": "user-1", "client_id": "web-app"}), &issued)

	out, stderr, err := tokenctl("admin", "10s", "--json", "keys", "rotate", "--publish-for", "0", "--instances", "1")
	if err != nil {
		t.Fatalf("rotate as admin: %v\n%s%s", err, out, stderr)
	}
	var keys rotatedKeys
	if err := json.Unmarshal([]byte(out), &keys); err != nil {
		t.Fatalf("rotate output %q: %v", out, err)
	}
	if out, stderr, err := tokenctl("admin", "10s", "keys", "list"); err != nil || !strings.Contains(out, keys.current("mac")) || !strings.Contains(out, "retired") {
		t.Fatalf("list as admin: %v\n%s%s", err, out, stderr)
	}

	refresher, refresherErrs := d.connect(t, "refresher")
	var got struct {
		RefreshToken string `json:"refresh_token"`
	}
	json.Unmarshal(allowed(t, refresher, "tokens.cmd.refresh", map[string]string{"refresh_token": issued.RefreshToken, "client_id": "web-app"}), &got)
	if refreshKeyID(got.RefreshToken) != keys.current("mac") {
		t.Fatalf("a token issued before the rotation refreshed to %q, want one under %s", got.RefreshToken, keys.current("mac"))
	}
	denied(t, refresher, refresherErrs, "tokens.admin.keys.stage")
	auditor, auditorErrs := d.connect(t, "auditor")
	denied(t, auditor, auditorErrs, "tokens.admin.keys.promote")
	denied(t, auditor, auditorErrs, "tokens.admin.keys.status")
	if out, stderr, err := tokenctl("auditor", "1s", "keys", "rotate", "--publish-for", "0"); err == nil {
		t.Fatalf("an auditor rotated the keys:\n%s%s", out, stderr)
	}
}

type keyIDs struct{ mac, signing string }

// initialKeys asks tokend for the keys in use before anything rotates.
func initialKeys(t *testing.T, nc *nats.Conn) keyIDs {
	t.Helper()
	f := mustIssue(t, nc, "user-probe", "web-app")
	return keyIDs{refreshKeyID(f.RefreshToken), accessKeyID(t, f.AccessToken)}
}

func verifyAccessToken(t *testing.T, set jose.JSONWebKeySet, token string) {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	keys := set.Key(tok.Headers[0].KeyID)
	var claims jwt.Claims
	if len(keys) != 1 || tok.Claims(keys[0].Key, &claims) != nil {
		t.Fatalf("an access token signed under %s does not verify against the JWKS", tok.Headers[0].KeyID)
	}
}

func mustFamilyOf(t *testing.T, token string) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 6 {
		t.Fatalf("not a refresh token")
	}
	return parts[1]
}
