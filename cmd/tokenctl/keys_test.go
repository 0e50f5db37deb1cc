package main

import (
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/events/eventstest"
)

// fakeKeyset stands in for TOKENS_KEYS behind fake tokend instances: stage
// and promote change it, each instance reports the revision it has loaded.
type fakeKeyset struct {
	mu        sync.Mutex
	status    api.KeysStatus
	stagedAt  time.Time
	promoteAt time.Time
	promoted  []api.KeysRequest // promote requests, in order
	revoked   []api.KeysRevokeRequest
	refused   string // why a promotion was refused, if one was
	instances []*fakeInstance
}

// fakeInstance is one tokend instance. One that lags reports the revision it
// had before each change for its next lag status requests.
type fakeInstance struct {
	id       string
	status   bool // serves key status
	lag      int
	loaded   uint64
	pending  int
	asked    int
	reported uint64 // the last revision it reported
}

func newFakeKeyset() *fakeKeyset {
	return &fakeKeyset{status: api.KeysStatus{Revision: 10, Keys: []api.KeyView{
		{Kid: "mac-1", Kind: "mac", State: "current", CreatedAt: "2026-01-01T00:00:00Z"},
		{Kid: "sig-1", Kind: "signing", State: "current", CreatedAt: "2026-01-01T00:00:00Z"},
		{Kid: "set-1", Kind: "set", State: "current", CreatedAt: "2026-01-01T00:00:00Z"},
	}}}
}

// changed moves the keyset to a new revision; lagging instances notice later.
func (f *fakeKeyset) changed() {
	f.status.Revision++
	for _, in := range f.instances {
		in.pending = in.lag
	}
}

// serve starts a fake instance on nc under prefix: it answers discovery and
// status, and stage and promote if admin.
func (f *fakeKeyset) serve(t *testing.T, nc *nats.Conn, prefix string, admin, withStatus bool, lag int) *fakeInstance {
	t.Helper()
	svc, err := micro.AddService(nc, micro.Config{Name: "tokens", Version: "0.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	in := &fakeInstance{id: svc.Info().ID, status: withStatus, lag: lag}
	f.mu.Lock()
	in.loaded = f.status.Revision
	f.instances = append(f.instances, in)
	f.mu.Unlock()
	reply := func(r micro.Request, v any) {
		data, _ := json.Marshal(v)
		r.Respond(data)
	}
	add := func(name, subject string, h micro.HandlerFunc, opts ...micro.EndpointOpt) {
		if err := svc.AddEndpoint(name, h, append(opts, micro.WithEndpointSubject(prefix+"."+subject))...); err != nil {
			t.Fatal(err)
		}
	}
	add("keys", "keys", func(r micro.Request) { r.Respond([]byte(`{"keys":[]}`)) })
	if withStatus {
		add("keys_status", api.SubjectKeysStatus, func(r micro.Request) {
			f.mu.Lock()
			defer f.mu.Unlock()
			in.asked++
			if in.pending > 0 {
				in.pending--
			} else {
				in.loaded = f.status.Revision
			}
			st := f.status
			st.InstanceID, st.Revision, in.reported = in.id, in.loaded, in.loaded
			reply(r, st)
		}, micro.WithEndpointQueueGroupDisabled())
	}
	if admin {
		add("keys_stage", api.SubjectKeysStage, func(r micro.Request) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.status.Keys = append(f.status.Keys,
				api.KeyView{Kid: "mac-2", Kind: "mac", State: "next", CreatedAt: "2026-06-01T00:00:00Z"},
				api.KeyView{Kid: "sig-2", Kind: "signing", State: "next", CreatedAt: "2026-06-01T00:00:00Z"},
				api.KeyView{Kid: "set-2", Kind: "set", State: "next", CreatedAt: "2026-06-01T00:00:00Z"})
			f.changed()
			f.stagedAt = time.Now()
			st := f.status
			st.InstanceID = in.id
			reply(r, st)
		})
		add("keys_promote", api.SubjectKeysPromote, func(r micro.Request) {
			f.mu.Lock()
			defer f.mu.Unlock()
			var req api.KeysRequest
			json.Unmarshal(r.Data(), &req)
			f.promoted = append(f.promoted, req)
			f.promoteAt = time.Now()
			for _, other := range f.instances {
				if other.status && other.reported < req.Revision {
					f.refused = "promoted before instance " + other.id + " reported the staged revision"
				}
			}
			for i, k := range f.status.Keys {
				switch k.State {
				case "current":
					f.status.Keys[i].State, f.status.Keys[i].RetiredAt, f.status.Keys[i].ExpiresAt = "retired", "2026-06-02T00:00:00Z", "2026-07-02T00:05:00Z"
				case "next":
					f.status.Keys[i].State = "current"
				}
			}
			f.changed()
			st := f.status
			st.InstanceID = in.id
			reply(r, st)
		})
		add("keys_revoke", api.SubjectKeysRevoke, func(r micro.Request) {
			f.mu.Lock()
			defer f.mu.Unlock()
			var req api.KeysRevokeRequest
			json.Unmarshal(r.Data(), &req)
			f.revoked = append(f.revoked, req)
			i := slices.IndexFunc(f.status.Keys, func(k api.KeyView) bool { return k.Kid == req.Kid })
			if i < 0 {
				r.Error("404", "not_found", []byte(`{"error":"not_found","error_description":"no key has this kid"}`))
				return
			}
			out := api.KeysRevoked{Revoked: f.status.Keys[i]}
			f.status.Keys = slices.Delete(f.status.Keys, i, i+1)
			if out.Revoked.State == "current" {
				fresh := api.KeyView{Kid: out.Revoked.Kind + "-new", Kind: out.Revoked.Kind, State: "current", CreatedAt: "2026-06-03T00:00:00Z"}
				f.status.Keys = append(f.status.Keys, fresh)
				out.Replacement, out.Generated = &fresh, true
			}
			f.changed()
			out.KeysStatus = f.status
			out.InstanceID = in.id
			reply(r, out)
		})
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return in
}

func TestKeysRotate(t *testing.T) {
	url := eventstest.MustServer(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	f := newFakeKeyset()
	f.serve(t, nc, "tokens", true, true, 0)
	lagging := f.serve(t, nc, "tokens", false, true, 3)
	f.serve(t, nc, "elsewhere", false, false, 0) // another deployment on the same NATS

	r := runCtl(t, "", "--nats-url", url, "keys", "rotate", "--publish-for", "300ms")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.promoted) != 1 || f.promoted[0].Revision != 11 || f.refused != "" {
		t.Fatalf("promote requests %+v (%s); want one, for the staged revision 11", f.promoted, f.refused)
	}
	if lagging.asked < 4 || lagging.reported != 12 {
		t.Fatalf("the lagging instance was asked %d times and reported revision %d last", lagging.asked, lagging.reported)
	}
	for _, want := range []string{"2 tokend instance(s)", "staged mac key mac-2, signing key sig-2 and set key set-2 at revision 11",
		"every instance has loaded revision 11", "waiting 300ms", "promoted at revision 12", "every instance has loaded revision 12"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	for _, want := range []string{"rotated: mac key mac-2, signing key sig-2 and set key set-2 are current (keyset revision 12)",
		"KIND", "mac      mac-2  current", "mac      mac-1  retired", "signing  sig-1  retired", "set      set-2  current", "set      set-1  retired"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
}

func TestKeysRotateJSON(t *testing.T) {
	url := eventstest.MustServer(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	f := newFakeKeyset()
	f.serve(t, nc, "tokens", true, true, 0)
	r := runCtl(t, "", "--nats-url", url, "--json", "keys", "rotate", "--publish-for", "400ms", "--instances", "1")
	var got api.KeysStatus
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.Revision != 12 || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if waited := f.promoteAt.Sub(f.stagedAt); waited < 400*time.Millisecond {
		t.Fatalf("promoted %v after staging, before --publish-for", waited)
	}
}

// TestKeysRotateWaitsForEveryInstance: an instance that never reports the
// staged keys (here: one too old to serve key administration) stops the
// rotation before the promotion.
func TestKeysRotateWaitsForEveryInstance(t *testing.T) {
	url := eventstest.MustServer(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	f := newFakeKeyset()
	f.serve(t, nc, "tokens", true, true, 0)
	old := f.serve(t, nc, "tokens", false, false, 0)

	r := runCtl(t, "", "--nats-url", url, "--timeout", "2s", "keys", "rotate", "--publish-for", "0")
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.code != 1 || len(f.promoted) != 0 {
		t.Fatalf("exit %d, %d promotions, stderr %q", r.code, len(f.promoted), r.stderr)
	}
	for _, want := range []string{"revision 11", old.id + " (no answer", "nothing was promoted", "run rotate again"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	// --instances: a missing instance is noticed before anything changes.
	r = runCtl(t, "", "--nats-url", url, "--timeout", "1s", "keys", "rotate", "--instances", "3")
	if r.code != 1 || !strings.Contains(r.stderr, "only 2 of the 3 expected") || f.status.Revision != 11 {
		t.Fatalf("exit %d, revision %d, stderr %q", r.code, f.status.Revision, r.stderr)
	}
}

func TestKeysList(t *testing.T) {
	url := eventstest.MustServer(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	f := newFakeKeyset()
	f.serve(t, nc, "tokens", true, true, 0)
	f.serve(t, nc, "tokens", false, true, 0)

	r := runCtl(t, "", "--nats-url", url, "keys", "list")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	for _, want := range []string{"keyset revision 10; 2 instance(s), all on it", "KIND     KID    STATE    CREATED",
		"mac      mac-1  current", "signing  sig-1  current", "set      set-1  current"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	r = runCtl(t, "", "--nats-url", url, "--json", "keys", "list", "--instances", "2")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 2 {
		t.Fatalf("--json: exit %d, stdout %q", r.code, r.stdout)
	}
	for _, l := range lines {
		var st api.KeysStatus
		if err := json.Unmarshal([]byte(l), &st); err != nil || st.InstanceID == "" || st.Revision != 10 {
			t.Fatalf("--json line %q: %v", l, err)
		}
	}
	if r := runCtl(t, "", "--nats-url", url, "--prefix", "elsewhere", "--timeout", "1s", "keys", "list"); r.code != 1 ||
		!strings.Contains(r.stderr, `no tokend instance with subject prefix "elsewhere"`) {
		t.Fatalf("another prefix: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestKeysRevoke(t *testing.T) {
	url := eventstest.MustServer(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	f := newFakeKeyset()
	f.serve(t, nc, "tokens", true, true, 0)
	lagging := f.serve(t, nc, "tokens", false, true, 3)

	r := runCtl(t, "", "--nats-url", url, "keys", "revoke", "sig-1", "--reason", "seed in a paste", "--by", "alice", "--revision", "10")
	if r.code != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	f.mu.Lock()
	if len(f.revoked) != 1 || f.revoked[0] != (api.KeysRevokeRequest{Kid: "sig-1", Reason: "seed in a paste", Revision: 10, By: "alice"}) {
		t.Fatalf("revoke requests %+v", f.revoked)
	}
	if lagging.reported != 11 {
		t.Fatalf("the lagging instance reported revision %d last; want the revocation's, 11", lagging.reported)
	}
	f.mu.Unlock()
	for _, want := range []string{"revoked signing key sig-1 (it was current) at keyset revision 11",
		"signing key signing-new is current in its place: a new key", "until they fetch the JWKS again", "signing  signing-new  current"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "every instance has loaded revision 11: none accepts key sig-1 any more") {
		t.Errorf("stderr %q", r.stderr)
	}

	r = runCtl(t, "", "--nats-url", url, "--json", "keys", "revoke", "nope", "--reason", "x", "--by", "alice")
	if r.code != 1 || !strings.Contains(r.stderr, "no key has this kid") {
		t.Fatalf("an unknown kid: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCtl(t, "", "--nats-url", url, "--json", "keys", "revoke", "mac-1", "--reason", "x", "--by", "alice")
	var got api.KeysRevoked
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil || got.Revoked.Kid != "mac-1" || got.Replacement == nil {
		t.Fatalf("--json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// A SET key: receivers learn the new one from the JWKS.
	r = runCtl(t, "", "--nats-url", url, "keys", "revoke", "set-1", "--reason", "private key in a core dump", "--by", "alice")
	for _, want := range []string{"revoked set key set-1 (it was current) at keyset revision 13", "set key set-new is current in its place: a new key",
		"SSF receivers refuse SETs signed with it until they fetch the JWKS again", "set      set-new      current"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("revoking a SET key: exit %d, stdout lacks %q:\n%s", r.code, want, r.stdout)
		}
	}

	// An instance that never reports the change is named, and the exit
	// status says the revocation has not reached everywhere.
	old := f.serve(t, nc, "tokens", false, false, 0)
	r = runCtl(t, "", "--nats-url", url, "--timeout", "2s", "keys", "revoke", "signing-new", "--reason", "x", "--by", "alice")
	if r.code != 1 || !strings.Contains(r.stderr, "the key is revoked, but not every instance loaded keyset revision 14") ||
		!strings.Contains(r.stderr, old.id) || !strings.Contains(r.stdout, "revoked signing key signing-new") {
		t.Fatalf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestKeysUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"keys", "frobnicate"},
		{"keys", "list", "--publish-for", "1s"},
		{"keys", "--publish-for", "1s"},
		{"keys", "--instances", "2"},
		{"keys", "rotate", "--publish-for", "-1s"},
		{"keys", "rotate", "--instances", "-1"},
		{"keys", "rotate", "list"},
		{"keys", "revoke"},
		{"keys", "revoke", "k1"},
		{"keys", "revoke", "k1", "--reason", ""},
		{"keys", "revoke", "k1", "--reason", "x", "--by", ""},
		{"keys", "revoke", "k1", "--reason", "x", "--publish-for", "1s"},
		{"keys", "list", "--reason", "x"},
		{"keys", "rotate", "--revision", "3"},
		{"keys", "list", "k1"},
	} {
		if r := runCtl(t, "", append([]string{"--nats-url", deadURL}, args...)...); r.code != 2 {
			t.Errorf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
	r := runCtl(t, "", "keys", "-h")
	for _, want := range []string{"keys [list | rotate [--publish-for D] | revoke KID --reason R [--revision N] [--by NAME]]", "--publish-for D",
		"--instances N", "JSON Lines", "run it again", "A compromised key"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("keys -h lacks %q:\n%s", want, r.stdout)
		}
	}
}
