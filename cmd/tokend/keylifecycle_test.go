package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
	"github.com/tokend/tokend/keys"
)

// Key lifecycle end to end: expiry, a leaked retired key, revocation.

// keysetEntry is the one entry of TOKENS_KEYS (keys.keysetKey).
const keysetEntry = "keyset"

// adminKeys sends a key administration request and decodes the reply.
func adminKeys(t *testing.T, nc *nats.Conn, subject string, body any, out any) {
	t.Helper()
	data, _ := json.Marshal(body)
	m, err := nc.Request("tokens."+subject, data, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subject, err)
	}
	if m.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("%s: %s", subject, m.Data)
	}
	if err := json.Unmarshal(m.Data, out); err != nil {
		t.Fatalf("%s: %q: %v", subject, m.Data, err)
	}
}

// rotateKeys stages and promotes, as tokenctl keys rotate does without
// waiting, and returns the promotion.
func rotateKeys(t *testing.T, nc *nats.Conn) api.KeysStatus {
	t.Helper()
	var staged, promoted api.KeysStatus
	adminKeys(t, nc, api.SubjectKeysStage, api.KeysRequest{}, &staged)
	adminKeys(t, nc, api.SubjectKeysPromote, api.KeysRequest{Revision: staged.Revision}, &promoted)
	return promoted
}

// keyOf returns the id of the key of kind in state, "" if none.
func keyOf(st api.KeysStatus, kind, state string) string {
	for _, k := range st.Keys {
		if k.Kind == kind && k.State == state {
			return k.Kid
		}
	}
	return ""
}

// awaitKeysRevision waits until every instance of apps has loaded revision rev.
func awaitKeysRevision(t *testing.T, rev uint64, apps ...*App) {
	t.Helper()
	eventstest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		for i, app := range apps {
			if got := app.api.Tokens.Keyring().Loaded().Revision; got < rev {
				return fmt.Errorf("instance %d at keyset revision %d, want %d", i, got, rev)
			}
		}
		return nil
	})
}

// postForm sends a form to an OAuth listener at base.
func postForm(t *testing.T, base, path string, form url.Values, user, pass string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		req.SetBasicAuth(url.QueryEscape(user), url.QueryEscape(pass))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// TestLeakedRetiredKeyCannotSignOutNewerFamilies is the security review's
// attack: whoever holds a retired MAC key and knows a family id (the sid of
// every access token) mints an "ancestor" of a family created after the key
// retired and presents it, to refresh or to revoke. Each presentation is
// refused as retired_key, nothing is revoked, and the family's owner goes
// on refreshing.
func TestLeakedRetiredKeyCannotSignOutNewerFamilies(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	ctx := context.Background()
	leaked := initialKeys(t, e.nc).mac
	promoted := rotateKeys(t, e.nc)
	if keyOf(promoted, "mac", "retired") != leaked {
		t.Fatalf("the first MAC key is not retired: %+v", promoted.Keys)
	}
	// The key retired two hours ago, as far as every instance knows: a
	// family created now is younger than it by more than the grace of
	// domain.RetiredKeyGrace.
	js, _ := jetstream.New(e.nc)
	kv, err := js.KeyValue(ctx, keys.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := kv.Get(ctx, keysetEntry)
	if err != nil {
		t.Fatal(err)
	}
	var ks keys.Keyset
	if err := json.Unmarshal(entry.Value(), &ks); err != nil {
		t.Fatal(err)
	}
	var secret []byte
	for i := range ks.MAC {
		if ks.MAC[i].ID == leaked {
			ks.MAC[i].RetiredAt = ks.MAC[i].RetiredAt.Add(-2 * time.Hour)
			secret = ks.MAC[i].Secret
		}
	}
	raw, _ := json.Marshal(ks)
	rev, err := kv.Update(ctx, keysetEntry, raw, entry.Revision())
	if err != nil {
		t.Fatal(err)
	}
	awaitKeysRevision(t, rev, e.app)

	victim := e.issue(t, "user-victim", "spa")
	current := mustRefresh(t, e.nc, victim.RefreshToken, "spa").RefreshToken
	current = mustRefresh(t, e.nc, current, "spa").RefreshToken // generation 3: generation 1 is an ancestor
	withLeakedKey, err := domain.NewTokenCodec(domain.MACKey{ID: leaked, Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	family := mustFamilyOf(t, current)
	forged := withLeakedKey.Mint(family, 1, [domain.SecretSize]byte{7}).Value()

	wantError(t, refresh(t, e.nc, forged, "spa"), "invalid_grant")
	var revoked struct {
		RevokedFamilies int `json:"revoked_families"`
	}
	if err := json.Unmarshal(call(t, e.nc, "tokens.cmd.revoke", map[string]string{"refresh_token": forged}).raw, &revoked); err != nil ||
		revoked.RevokedFamilies != 0 {
		t.Fatalf("NATS revoke with the forged token: %+v, %v", revoked, err)
	}
	if code, body := postForm(t, e.base, api.PathRevoke, url.Values{"token": {forged}, "client_id": {"spa"}}, "", ""); code != http.StatusOK {
		t.Fatalf("OAuth revoke with the forged token: %d %v", code, body)
	}

	evs := familyEvents(t, e.nc, family)
	c := countTypes(evs)
	if c["token.replay_detected"]+c["family.revoked"] != 0 || c["refresh.rejected"] != 1 {
		t.Fatalf("the family's events: %v", c)
	}
	for _, ev := range evs {
		if ev.Type == "refresh.rejected" && ev.Reason != domain.ReasonRetiredKey {
			t.Fatalf("refused as %q, want %s", ev.Reason, domain.ReasonRetiredKey)
		}
	}
	mustRefresh(t, e.nc, current, "spa")
}

// TestRetiredKeysExpireWithoutRotation: a retired signing key leaves the
// JWKS of every instance, over NATS and HTTP, at its expiry, with no
// rotation and no write to the key bucket; until then the JWKS may be
// cached only until that expiry.
func TestRetiredKeysExpireWithoutRotation(t *testing.T) {
	natsURL, apps := mustInstances(t, 2, func(c *Config) {
		c.AccessTTL = time.Second
		c.keySkew = 2 * time.Second // the retired signing key lives 3 s
	})
	nc := eventstest.MustConnect(t, natsURL)
	retired := initialKeys(t, nc).signing
	promoted := rotateKeys(t, nc)
	awaitKeysRevision(t, promoted.Revision, apps...)

	maxAge := regexp.MustCompile(`^public, max-age=(\d+)$`)
	for _, app := range apps {
		_, h, jwks := httpGet(t, app, "/.well-known/jwks.json")
		m := maxAge.FindStringSubmatch(h.Get("Cache-Control"))
		if m == nil {
			t.Fatalf("Cache-Control %q", h.Get("Cache-Control"))
		}
		// Unless the key has expired already, on a slow machine, it is
		// cacheable only until then.
		if age, _ := strconv.Atoi(m[1]); strings.Contains(string(jwks), retired) && age > 3 {
			t.Fatalf("a JWKS whose key expires within 3 s is cacheable for %d s", age)
		}
	}

	eventstest.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		for i, app := range apps {
			if _, _, jwks := httpGet(t, app, "/.well-known/jwks.json"); strings.Contains(string(jwks), retired) {
				return fmt.Errorf("instance %d still publishes the retired key over HTTP", i)
			}
			if l := app.api.Tokens.Keyring().Loaded(); l.Revision != promoted.Revision {
				return fmt.Errorf("instance %d at revision %d, want %d: the keyset was written", i, l.Revision, promoted.Revision)
			}
		}
		return nil
	})
	for range 4 { // the NATS endpoint is answered by either instance
		if r := call(t, nc, "tokens.keys", []byte(`{}`)); strings.Contains(string(r.raw), retired) {
			t.Fatalf("tokens.keys still publishes the retired key: %s", r.raw)
		}
	}
	var status api.KeysStatus
	adminKeys(t, nc, api.SubjectKeysStatus, struct{}{}, &status)
	if keyOf(status, "signing", "retired") != "" || keyOf(status, "mac", "retired") == "" || status.Revision != promoted.Revision {
		t.Fatalf("key status after the signing key's expiry: %+v", status)
	}
	for _, app := range apps {
		if _, h, _ := httpGet(t, app, "/.well-known/jwks.json"); h.Get("Cache-Control") != "public, max-age=300" {
			t.Fatalf("Cache-Control without a retired key: %q", h.Get("Cache-Control"))
		}
	}
}

// TestKeysRevokeEndToEnd: tokenctl keys revoke drops a compromised key on
// every instance at once. Refresh tokens under the revoked MAC key are
// refused; access tokens under the revoked signing key no longer verify,
// for introspection nor for revocation; a revoked SET key leaves the JWKS;
// new tokens and SETs carry the keys made current in their place; each
// revocation is counted.
func TestKeysRevokeEndToEnd(t *testing.T) {
	e := mustOAuthEnv(t, nil)
	cfg := oauthConfig(t, e.app.NATSURL())
	cfg.Issuer = e.base // one deployment, one issuer
	second := MustApp(t, cfg, nil)
	apps := []*App{e.app, second}
	bases := []string{e.base, "http://" + cfg.OAuthHTTP.Addr}
	bin := buildTokenctl(t)
	tokenctl := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"--nats-url", e.app.NATSURL(), "--timeout", "10s"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("tokenctl %q: %v\n%s", args, err, out)
		}
		return string(out)
	}

	before := e.issue(t, "user-1", "web")
	oldMAC, oldSigning := refreshKeyID(before.RefreshToken), accessKeyID(t, before.AccessToken)
	out := tokenctl("keys", "revoke", oldMAC, "--reason", "key bucket backup leaked", "--by", "alice", "--instances", "2")
	if !strings.Contains(out, "revoked mac key "+oldMAC+" (it was current)") || !strings.Contains(out, "is current in its place: a new key") ||
		!strings.Contains(out, "every instance has loaded revision") {
		t.Fatalf("keys revoke said:\n%s", out)
	}
	for _, nc := range []*nats.Conn{e.nc, eventstest.MustConnect(t, second.NATSURL())} {
		wantError(t, refresh(t, nc, before.RefreshToken, "web"), "invalid_grant")
	}
	after := e.issue(t, "user-2", "web")
	if refreshKeyID(after.RefreshToken) == oldMAC {
		t.Fatal("minted under the revoked MAC key")
	}
	mustRefresh(t, e.nc, after.RefreshToken, "web")

	// The access token of the first family verifies until its signing key
	// is revoked.
	introspect := func(base string) bool {
		t.Helper()
		code, body := postForm(t, base, api.PathIntrospect, url.Values{"token": {before.AccessToken}}, "web", e.secret)
		if code != http.StatusOK {
			t.Fatalf("introspect: %d %v", code, body)
		}
		return body["active"] == true
	}
	// (Introspection reads the family from each instance's read model:
	// wait for both.)
	eventstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		for i, base := range bases {
			if !introspect(base) {
				return fmt.Errorf("instance %d: the access token is inactive before its key is revoked", i)
			}
		}
		return nil
	})
	tokenctl("keys", "revoke", oldSigning, "--reason", "signing seed leaked", "--by", "alice", "--instances", "2")
	for i, app := range apps {
		if introspect(bases[i]) {
			t.Fatalf("instance %d: an access token of the revoked key is active", i)
		}
		if _, _, jwks := httpGet(t, app, "/.well-known/jwks.json"); strings.Contains(string(jwks), oldSigning) {
			t.Fatalf("instance %d still publishes the revoked key", i)
		}
	}
	// Revoking with it (which would end its family) does nothing.
	if code, _ := postForm(t, e.base, api.PathRevoke, url.Values{"token": {before.AccessToken}}, "web", e.secret); code != http.StatusOK {
		t.Fatalf("OAuth revoke: %d", code)
	}
	if c := countTypes(familyEvents(t, e.nc, mustFamilyOf(t, before.RefreshToken))); c["family.revoked"] != 0 {
		t.Fatalf("an access token of the revoked key revoked its family: %v", c)
	}
	if got := e.issue(t, "user-3", "web"); accessKeyID(t, got.AccessToken) == oldSigning {
		t.Fatal("signed with the revoked key")
	}

	// A SET key: it leaves the JWKS, served over HTTP on both listeners,
	// and every instance signs SETs with a new key.
	var status api.KeysStatus
	adminKeys(t, e.nc, api.SubjectKeysStatus, struct{}{}, &status)
	oldSET := keyOf(status, "set", "current")
	out = tokenctl("keys", "revoke", oldSET, "--reason", "private key in a core dump", "--by", "alice", "--instances", "2")
	if !strings.Contains(out, "revoked set key "+oldSET+" (it was current)") || !strings.Contains(out, "SSF receivers refuse SETs signed with it") {
		t.Fatalf("keys revoke said:\n%s", out)
	}
	var newSET string
	for i, app := range apps {
		kid, _, err := app.api.Tokens.Keyring().Loaded().SETSigner()
		if err != nil || kid == oldSET || (newSET != "" && kid != newSET) {
			t.Fatalf("instance %d signs SETs with %q (revoked %s, the other instance %q): %v", i, kid, oldSET, newSET, err)
		}
		newSET = kid
		_, _, jwks := httpGet(t, app, api.PathJWKS)
		resp, err := http.Get(bases[i] + api.PathJWKS)
		if err != nil {
			t.Fatal(err)
		}
		oauthJWKS, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, jwks := range [][]byte{jwks, oauthJWKS} {
			if strings.Contains(string(jwks), oldSET) || !strings.Contains(string(jwks), `"kid":"`+newSET+`"`) || !strings.Contains(string(jwks), `"alg":"RS256"`) {
				t.Fatalf("instance %d: the JWKS after the SET key's revocation: %s", i, jwks)
			}
		}
	}

	revokedTotal := map[string]float64{}
	for _, app := range apps {
		m := parseMetrics(t, scrape(t, app))
		for _, kind := range []string{"mac", "signing", "set"} {
			revokedTotal[kind] += m.value("tokend_keys_revoked_total", "kind", kind)
		}
	}
	if revokedTotal["mac"] != 1 || revokedTotal["signing"] != 1 || revokedTotal["set"] != 1 {
		t.Fatalf("tokend_keys_revoked_total summed over the instances: %v", revokedTotal)
	}
}
