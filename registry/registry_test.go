package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events/eventstest"
)

const (
	clientSecret1 = "Zm9yLXRlc3RzLW9ubHktMjU2LWJpdHMtb2YtcmFuZG9t"
	clientSecret2 = "YW5vdGhlci0yNTYtYml0LXNlY3JldC1mb3ItdGVzdHM"
)

var (
	clientHash1 = domain.HashClientSecret(clientSecret1)
	clientHash2 = domain.HashClientSecret(clientSecret2)
	alice       = Actor{By: "alice"}
)

// lockedBuffer collects log output written from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func mustRegistry(t *testing.T, js jetstream.JetStream, logs *lockedBuffer) *Registry {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	if logs != nil {
		log = slog.New(slog.NewTextHandler(logs, nil))
	}
	r, err := Open(context.Background(), js, 1, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

func webApp(id string) domain.Client {
	return domain.Client{ID: id, Type: domain.ClientConfidential, Scopes: []string{"openid", "api:read"},
		Audiences: []string{"https://api.example.com"}}
}

// waitClient waits until r's in-memory view of id satisfies cond.
func waitClient(t *testing.T, r *Registry, id string, what string, cond func(domain.Client, bool) bool) {
	t.Helper()
	eventstest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if c, ok := r.Lookup(id); !cond(c, ok) {
			return fmt.Errorf("client %q: still not %s (registered: %v)", id, what, ok)
		}
		return nil
	})
}

func TestRegistryPutUpdateRemove(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	logs := &lockedBuffer{}
	r := mustRegistry(t, js, logs)
	var actions []string
	r.OnChange = func(a string) { actions = append(actions, a) }
	id := `web app/ü:*>.` // every character a KV key refuses

	created, err := r.Put(ctx, webApp(id), clientHash1, 0, alice)
	if err != nil {
		t.Fatal(err)
	}
	if created.Change.Action != ClientCreated || created.Change.By != "alice" || created.Revision == 0 {
		t.Fatalf("created %+v", created)
	}
	// The writer sees its own change at once, without waiting for its watch.
	if c, ok := r.Lookup(id); !ok || !c.VerifySecret(clientSecret1, time.Now()) {
		t.Fatal("the new client is not in the writer's memory")
	}
	_, err = r.Put(ctx, webApp(id), clientHash1, 0, alice)
	wantCode(t, err, domain.EInvalidRequest)

	changed := webApp(id)
	changed.Scopes = []string{"openid"}
	_, err = r.Put(ctx, changed, "", created.Revision+1, alice)
	wantCode(t, err, domain.EInvalidRequest)
	updated, err := r.Put(ctx, changed, "", created.Revision, Actor{By: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if updated.Change.Action != ClientUpdated || len(updated.Client.Scopes) != 1 || !updated.Client.VerifySecret(clientSecret1, time.Now()) ||
		!updated.Client.CreatedAt.Equal(created.Client.CreatedAt) {
		t.Fatalf("updated %+v", updated)
	}
	got, err := r.Get(ctx, id)
	if err != nil || got.Revision != updated.Revision || got.Change.By != "bob" {
		t.Fatalf("get: %+v, %v", got, err)
	}
	_, err = r.Put(ctx, webApp("other"), "", 0, alice)
	wantCode(t, err, domain.EInvalidRequest) // a secret method needs a secret
	_, err = r.Put(ctx, webApp("other"), clientHash1, 3, alice)
	wantCode(t, err, domain.ENotFound)

	_, err = r.Remove(ctx, id, created.Revision, alice)
	wantCode(t, err, domain.EInvalidRequest)
	removed, err := r.Remove(ctx, id, 0, alice)
	if err != nil || !removed.Removed || removed.Change.Action != ClientRemoved {
		t.Fatalf("remove: %+v, %v", removed, err)
	}
	if _, ok := r.Lookup(id); ok {
		t.Fatal("a removed client is still registered")
	}
	_, err = r.Get(ctx, id)
	wantCode(t, err, domain.ENotFound)
	_, err = r.Remove(ctx, id, 0, alice)
	wantCode(t, err, domain.ENotFound)
	_, err = r.Put(ctx, changed, "", removed.Revision, alice)
	wantCode(t, err, domain.ENotFound) // an update of a removed client

	// Registered again: a new client, with the old one's history kept.
	again, err := r.Put(ctx, webApp(id), clientHash2, 0, alice)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := r.Lookup(id); c.VerifySecret(clientSecret1, time.Now()) || !c.VerifySecret(clientSecret2, time.Now()) {
		t.Fatal("the client registered again verifies the old secret, or not the new one")
	}
	history, err := r.History(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, h := range history {
		seen = append(seen, h.Change.Action+"/"+h.Change.By)
	}
	if strings.Join(seen, " ") != "create/alice update/bob remove/alice create/alice" || history[3].Revision != again.Revision {
		t.Fatalf("history %v", seen)
	}
	_, err = r.History(ctx, "never-registered")
	wantCode(t, err, domain.ENotFound)
	if strings.Join(actions, " ") != "create update remove create" {
		t.Fatalf("OnChange saw %v", actions)
	}

	list, err := r.List(ctx)
	if err != nil || len(list) != 1 || list[0].Client.ID != id {
		t.Fatalf("list: %+v, %v", list, err)
	}
	if _, err := r.Put(ctx, webApp("a-first"), clientHash1, 0, alice); err != nil {
		t.Fatal(err)
	}
	if list, err = r.List(ctx); err != nil || len(list) != 2 || list[0].Client.ID != "a-first" {
		t.Fatalf("list, by client id: %+v, %v", list, err)
	}

	for _, secret := range []string{clientSecret1, clientSecret2, clientHash1, clientHash2} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("a secret or its hash is in the log:\n%s", logs)
		}
	}
	if !strings.Contains(logs.String(), "client registry changed") || !strings.Contains(logs.String(), "by=bob") {
		t.Fatalf("the changes are not logged:\n%s", logs)
	}
}

func TestRegistryRefusesAnonymousChanges(t *testing.T) {
	_, js := eventstest.MustJS(t)
	r := mustRegistry(t, js, nil)
	ctx := context.Background()
	_, err := r.Put(ctx, webApp("web"), clientHash1, 0, Actor{})
	wantCode(t, err, domain.EInvalidRequest)
	_, err = r.Put(ctx, webApp("web"), clientHash1, 0, Actor{By: "eve\x1b[2J"})
	wantCode(t, err, domain.EInvalidRequest)
	e, err := r.Put(ctx, webApp("web"), clientHash1, 0, Actor{NATSUser: "UADMIN"})
	if err != nil || e.Change.NATSUser != "UADMIN" {
		t.Fatalf("a change by a known NATS user: %+v, %v", e, err)
	}
}

func TestRegistryRotateSecret(t *testing.T) {
	_, js := eventstest.MustJS(t)
	r := mustRegistry(t, js, nil)
	ctx := context.Background()
	created, err := r.Put(ctx, webApp("web"), clientHash1, 0, alice)
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.RotateSecret(ctx, "web", clientHash2, time.Hour, created.Revision+5, alice)
	wantCode(t, err, domain.EInvalidRequest)
	rotated, err := r.RotateSecret(ctx, "web", clientHash2, time.Hour, created.Revision, alice)
	if err != nil {
		t.Fatal(err)
	}
	at := rotated.Change.At
	c, _ := r.Lookup("web")
	if rotated.Change.Action != ClientSecretRotated || !c.VerifySecret(clientSecret1, at) || !c.VerifySecret(clientSecret2, at) {
		t.Fatal("both secrets verify during the grace period")
	}
	if c.VerifySecret(clientSecret1, at.Add(time.Hour)) || !c.VerifySecret(clientSecret2, at.Add(time.Hour)) {
		t.Fatal("only the new secret verifies after the grace period")
	}
	_, err = r.RotateSecret(ctx, "web", clientHash2, 0, 0, alice)
	wantCode(t, err, domain.EInvalidRequest) // already its secret
	_, err = r.RotateSecret(ctx, "nobody", clientHash2, 0, 0, alice)
	wantCode(t, err, domain.ENotFound)
	if _, err := r.RotateSecret(ctx, "web", clientHash1, 0, 0, alice); err == nil {
		t.Fatal("rotated back to a secret the client holds")
	}
}

// TestRegistryTwoInstances: a change written through one instance reaches
// another's memory; an instance opened later loads the current state.
func TestRegistryTwoInstances(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a, b := mustRegistry(t, js, nil), mustRegistry(t, js, nil)
	var bActions []string
	b.OnChange = func(action string) { bActions = append(bActions, action) }

	created, err := a.Put(ctx, webApp("web"), clientHash1, 0, alice)
	if err != nil {
		t.Fatal(err)
	}
	waitClient(t, b, "web", "registered", func(c domain.Client, ok bool) bool { return ok && c.VerifySecret(clientSecret1, time.Now()) })
	if _, err := a.RotateSecret(ctx, "web", clientHash2, 0, created.Revision, alice); err != nil {
		t.Fatal(err)
	}
	waitClient(t, b, "web", "rotated", func(c domain.Client, ok bool) bool {
		return ok && c.VerifySecret(clientSecret2, time.Now()) && !c.VerifySecret(clientSecret1, time.Now())
	})
	if _, err := a.Put(ctx, webApp("gone"), clientHash1, 0, alice); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Remove(ctx, "gone", 0, alice); err != nil {
		t.Fatal(err)
	}
	waitClient(t, b, "gone", "removed", func(_ domain.Client, ok bool) bool { return !ok })

	later := mustRegistry(t, js, nil)
	if c, ok := later.Lookup("web"); !ok || !c.VerifySecret(clientSecret2, time.Now()) {
		t.Fatal("an instance started later does not have the client")
	}
	if _, ok := later.Lookup("gone"); ok {
		t.Fatal("an instance started later has a removed client")
	}
	if len(bActions) != 0 {
		t.Fatalf("the instance that only watched counted changes: %v", bActions)
	}
}

// TestRegistryConcurrentCreates: of simultaneous creations of one client,
// exactly one wins; the others are told it exists.
func TestRegistryConcurrentCreates(t *testing.T) {
	_, js := eventstest.MustJS(t)
	regs := []*Registry{mustRegistry(t, js, nil), mustRegistry(t, js, nil)}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		won  int
		errs []error
	)
	for i := range 8 {
		wg.Go(func() {
			_, err := regs[i%2].Put(context.Background(), webApp("web"), domain.HashClientSecret(fmt.Sprint(i)), 0, alice)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				won++
			} else {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if won != 1 {
		t.Fatalf("%d creations won", won)
	}
	for _, err := range errs {
		if domain.ErrorCode(err) != domain.EInvalidRequest || !strings.Contains(err.Error(), "is registered") {
			t.Fatalf("a losing creation: %v", err)
		}
	}
}

// TestRegistryFailsClosed: an entry deleted or overwritten in the bucket
// directly, bypassing tokend, refuses the client rather than keep an
// older revision.
func TestRegistryFailsClosed(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	r := mustRegistry(t, js, nil)
	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"garbled", "invalid", "deleted"} {
		if _, err := r.Put(ctx, webApp(id), clientHash1, 0, alice); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kv.Put(ctx, clientKey("garbled"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, clientKey("invalid"), []byte(`{"client":{"client_id":"invalid","type":"confidential","auth_method":"client_secret_basic","scopes":[],"audiences":[],`+
		`"access_ttl":"0s","refresh_idle_ttl":"0s","refresh_absolute_ttl":"0s","reuse_interval":"0s","on_replay":"revoke_family"},"change":{"action":"update"}}`)); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, clientKey("deleted")); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"garbled", "invalid", "deleted"} {
		waitClient(t, r, id, "refused", func(_ domain.Client, ok bool) bool { return !ok })
	}
	_, err = r.Get(ctx, "garbled")
	wantCode(t, err, domain.EServerError)
	_, err = r.Get(ctx, "deleted")
	wantCode(t, err, domain.ENotFound)
	h, err := r.History(ctx, "deleted")
	if err != nil || len(h) != 2 || h[1].Change.Action != ClientDeleted || !h[1].Removed {
		t.Fatalf("history of a deleted entry: %+v, %v", h, err)
	}
	if _, err := r.Put(ctx, webApp("deleted"), clientHash1, 0, alice); err != nil {
		t.Fatalf("registering a client deleted in the bucket again: %v", err)
	}
	if _, ok := r.Lookup("deleted"); !ok {
		t.Fatal("registered again but not in memory")
	}
}

func TestOpenRegistryGivesUp(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Open(ctx, js, 1, slog.New(slog.DiscardHandler)); !errors.Is(err, context.Canceled) {
		t.Fatalf("opening with a cancelled context: %v", err)
	}
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	if err == nil || domain.ErrorCode(err) != code {
		t.Fatalf("want %s, got %v", code, err)
	}
}

// TestRegistryResources: a resource server's audiences reach every
// instance, and an entry written before they existed reads as none.
func TestRegistryResources(t *testing.T) {
	_, js := eventstest.MustJS(t)
	ctx := context.Background()
	a, b := mustRegistry(t, js, nil), mustRegistry(t, js, nil)
	gw := webApp("api-gw")
	gw.Resources = []string{"https://api.example.com", "https://billing.example.com"}
	if _, err := a.Put(ctx, gw, clientHash1, 0, alice); err != nil {
		t.Fatal(err)
	}
	waitClient(t, b, "api-gw", "a resource server", func(c domain.Client, ok bool) bool {
		return ok && slices.Equal(c.Resources, gw.Resources)
	})
	if got, err := b.Get(ctx, "api-gw"); err != nil || !slices.Equal(got.Client.Resources, gw.Resources) {
		t.Fatalf("get: %+v, %v", got, err)
	}

	kv, err := js.KeyValue(ctx, Bucket)
	if err != nil {
		t.Fatal(err)
	}
	old := `{"client":{"client_id":"older","type":"confidential","auth_method":"client_secret_basic",` +
		`"secrets":[{"sha256":"` + clientHash1 + `","created_at":"2026-01-01T00:00:00Z"}],"scopes":["openid"],"audiences":[],` +
		`"access_ttl":"0s","refresh_idle_ttl":"0s","refresh_absolute_ttl":"0s","reuse_interval":"0s","on_replay":"revoke_family",` +
		`"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"},"change":{"action":"create","at":"2026-01-01T00:00:00Z","by":"alice"}}`
	if _, err := kv.Put(ctx, clientKey("older"), []byte(old)); err != nil {
		t.Fatal(err)
	}
	waitClient(t, a, "older", "registered", func(c domain.Client, ok bool) bool { return ok && len(c.Resources) == 0 })
}
