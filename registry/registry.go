// Package registry is the client registry of a deployment: registered OAuth
// clients in the KV bucket TOKENS_CLIENTS, followed by every instance.
package registry

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/events"

	"github.com/tokend/tokend/domain"
)

// Bucket is the KV bucket of registered OAuth clients, shared by
// every instance: one entry per client.
const Bucket = "TOKENS_CLIENTS"

// clientsHistory is how many revisions of each client the bucket keeps
// (JetStream's maximum), so the changes stay on record for audit.
const clientsHistory = jetstream.KeyValueMaxHistory

// changeAttempts bounds the compare-and-set retries of one change.
const changeAttempts = 5

// Actions of registry changes: ClientChange.Action, and the label of the
// changes metric.
const (
	ClientCreated       = "create"
	ClientUpdated       = "update"
	ClientRemoved       = "remove"
	ClientSecretRotated = "rotate_secret"
	// ClientDeleted is an entry deleted or purged in the bucket directly,
	// not through tokend; such entries carry no change record.
	ClientDeleted = "delete"
)

// Actor is who made a change. By is what the admin says (tokenctl sends
// $USER); NATSUser is the NATS user the server reported in the request's
// Nats-Request-Info header. The server sets that header on requests that
// cross accounts through a service import; within one account the sender
// may write it, so it is as trustworthy as the admin role.
type Actor struct {
	By       string `json:"by,omitempty"`
	NATSUser string `json:"nats_user,omitempty"`
}

// ClientChange records one change of the registry.
type ClientChange struct {
	Action string    `json:"action"`
	At     time.Time `json:"at"`
	Actor
}

// ClientEntry is one stored revision of a client.
type ClientEntry struct {
	Revision uint64 // the TOKENS_CLIENTS revision
	Client   domain.Client
	Removed  bool // the client was removed by this change; Client is zero
	Change   ClientChange
}

// Registry is the client registry of a deployment, in TOKENS_CLIENTS.
// Every instance follows the whole bucket and keeps the clients in memory,
// so Lookup does no I/O and a change made on one instance reaches the
// others as soon as JetStream delivers it. Changes are compare-and-set on
// the entry's revision.
type Registry struct {
	// OnChange, if set, is called with the action of every change this
	// instance writes (not those it learns from others), e.g. to count them.
	OnChange func(action string)

	kv      jetstream.KeyValue
	log     *slog.Logger
	now     func() time.Time
	watcher jetstream.KeyWatcher

	mu      sync.Mutex // orders adoptions
	clients atomic.Pointer[map[string]clientState]
}

// clientState is the newest revision of a client this instance knows;
// removed clients stay as such, so a late older revision cannot revive them.
type clientState struct {
	revision uint64
	client   domain.Client
	removed  bool
}

// Open creates or opens TOKENS_CLIENTS, loads every client and
// follows the bucket until Stop.
func Open(ctx context.Context, js jetstream.JetStream, replicas int, log *slog.Logger) (*Registry, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "tokend registered OAuth clients (secrets as SHA-256 only)",
		History:     clientsHistory,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	r := &Registry{kv: kv, log: log, now: time.Now}
	r.clients.Store(&map[string]clientState{})
	// The clients present at the start are loaded in one map, swapped in
	// once; each later change swaps in a copy (adopt).
	initial := map[string]clientState{}
	loading := true
	apply := func(e jetstream.KeyValueEntry) {
		id, entry, err := decodeClientEntry(e)
		if err != nil {
			// Refuse the client rather than keep a revision its admin
			// replaced, e.g. to drop a leaked secret.
			r.log.Error("client registry entry unusable, the client is refused", "key", e.Key(), "revision", e.Revision(), "err", err)
			entry = ClientEntry{Revision: e.Revision(), Removed: true}
		}
		switch {
		case id == "":
		case loading:
			initial[id] = stateOf(entry)
		default:
			r.adopt(id, entry)
		}
	}
	loaded := func() {
		r.clients.Store(&initial)
		registered := 0
		for _, s := range initial {
			if !s.removed {
				registered++
			}
		}
		r.log.Info("client registry loaded", "clients", registered)
		loading = false
	}
	if r.watcher, err = events.FollowBucket(ctx, kv, apply, loaded); err != nil {
		return nil, fmt.Errorf("kv %s: watch: %w", Bucket, err)
	}
	return r, nil
}

// Stop stops following the bucket.
func (r *Registry) Stop() { r.watcher.Stop() }

// Lookup returns the registered client clientID, from memory. The client's
// slices are shared: do not modify them.
func (r *Registry) Lookup(clientID string) (domain.Client, bool) {
	s, ok := (*r.clients.Load())[clientID]
	if !ok || s.removed {
		return domain.Client{}, false
	}
	return s.client, true
}

func stateOf(e ClientEntry) clientState {
	return clientState{revision: e.Revision, client: e.Client, removed: e.Removed}
}

// adopt makes entry the client's version in memory unless a newer one is.
func (r *Registry) adopt(clientID string, entry ClientEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := *r.clients.Load()
	if s, ok := cur[clientID]; ok && s.revision >= entry.Revision {
		return
	}
	next := maps.Clone(cur)
	next[clientID] = stateOf(entry)
	r.clients.Store(&next)
	// Never the secrets or their hashes: their number is enough.
	attrs := []any{"client_id", clientID, "revision", entry.Revision, "action", entry.Change.Action,
		"by", entry.Change.By, "nats_user", entry.Change.NATSUser}
	if !entry.Removed {
		c := entry.Client
		attrs = append(attrs, "type", c.Type, "auth_method", c.AuthMethod, "secrets", len(c.Secrets),
			"scopes", len(c.Scopes), "audiences", len(c.Audiences), "resources", len(c.Resources), "ssf_receiver", c.Receiver, "on_replay", c.OnReplay)
	}
	r.log.Info("client registry changed", attrs...)
}

// Get reads client clientID from the bucket: not_found if it is not
// registered.
func (r *Registry) Get(ctx context.Context, clientID string) (ClientEntry, error) {
	if err := domain.ValidateName("client_id", clientID); err != nil {
		return ClientEntry{}, err
	}
	e, found, err := r.read(ctx, clientID)
	if err != nil {
		return ClientEntry{}, err
	}
	if !found || e.Removed {
		return ClientEntry{}, notRegistered(clientID)
	}
	return e, nil
}

// List reads every registered client from the bucket, by client id.
func (r *Registry) List(ctx context.Context) ([]ClientEntry, error) {
	w, err := r.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, registryUnavailable("list the clients", err)
	}
	defer w.Stop()
	var out []ClientEntry
	for {
		select {
		case <-ctx.Done():
			return nil, registryUnavailable("list the clients", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, registryUnavailable("list the clients", errors.New("watch ended"))
			}
			if e == nil {
				slices.SortFunc(out, func(a, b ClientEntry) int { return cmp.Compare(a.Client.ID, b.Client.ID) })
				return out, nil
			}
			_, entry, err := decodeClientEntry(e)
			if err != nil {
				return nil, err
			}
			if !entry.Removed {
				out = append(out, entry)
			}
		}
	}
}

// History returns every revision of client clientID the bucket keeps (the
// last 64), oldest first, removals included; not_found if it never
// existed.
func (r *Registry) History(ctx context.Context, clientID string) ([]ClientEntry, error) {
	if err := domain.ValidateName("client_id", clientID); err != nil {
		return nil, err
	}
	entries, err := r.kv.History(ctx, clientKey(clientID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, notRegistered(clientID)
	}
	if err != nil {
		return nil, registryUnavailable("read the history", err)
	}
	out := make([]ClientEntry, 0, len(entries))
	for _, e := range entries {
		_, entry, err := decodeClientEntry(e)
		if err != nil {
			return nil, err
		}
		out = append(out, entry)
	}
	return out, nil
}

// Put registers c or changes its settings. With ifRevision 0 it creates c,
// which must not be registered (domain.NewClient; secretHash is its first
// secret); otherwise it updates c, which must be at revision ifRevision
// (Client.Update; secretHash only for a client that has no secret). It
// returns the entry as written; errors are invalid_request (bad settings,
// a revision that moved on) or not_found.
func (r *Registry) Put(ctx context.Context, c domain.Client, secretHash string, ifRevision uint64, who Actor) (ClientEntry, error) {
	return r.change(ctx, c.ID, who, func(cur ClientEntry, found bool, now time.Time) (*domain.Client, string, error) {
		if !found || cur.Removed {
			if ifRevision != 0 {
				return nil, "", notRegistered(c.ID)
			}
			next, err := domain.NewClient(c, secretHash, now)
			return &next, ClientCreated, err
		}
		if ifRevision == 0 {
			return nil, "", domain.Errorf(domain.EInvalidRequest, "client %q is registered (revision %d): update it with its revision", truncateID(c.ID), cur.Revision)
		}
		if ifRevision != cur.Revision {
			return nil, "", clientChangedSince(c.ID, ifRevision, cur.Revision)
		}
		next, err := cur.Client.Update(c, secretHash, now)
		return &next, ClientUpdated, err
	})
}

// Remove unregisters client clientID, at revision ifRevision if not 0.
// Its history stays in the bucket.
func (r *Registry) Remove(ctx context.Context, clientID string, ifRevision uint64, who Actor) (ClientEntry, error) {
	return r.change(ctx, clientID, who, func(cur ClientEntry, found bool, _ time.Time) (*domain.Client, string, error) {
		if err := current(clientID, cur, found, ifRevision); err != nil {
			return nil, "", err
		}
		return nil, ClientRemoved, nil
	})
}

// RotateSecret gives client clientID a new secret, whose SHA-256 is
// secretHash; its previous secrets verify for grace more (see
// domain.Client.RotateSecret). ifRevision as in Remove.
func (r *Registry) RotateSecret(ctx context.Context, clientID, secretHash string, grace time.Duration, ifRevision uint64, who Actor) (ClientEntry, error) {
	return r.change(ctx, clientID, who, func(cur ClientEntry, found bool, now time.Time) (*domain.Client, string, error) {
		if err := current(clientID, cur, found, ifRevision); err != nil {
			return nil, "", err
		}
		next, err := cur.Client.RotateSecret(secretHash, grace, now)
		return &next, ClientSecretRotated, err
	})
}

// current checks that a client is registered, at ifRevision if not 0.
func current(clientID string, cur ClientEntry, found bool, ifRevision uint64) error {
	switch {
	case !found || cur.Removed:
		return notRegistered(clientID)
	case ifRevision != 0 && ifRevision != cur.Revision:
		return clientChangedSince(clientID, ifRevision, cur.Revision)
	}
	return nil
}

// change writes what decide makes of the stored client (nil: remove it)
// with a compare-and-set on its revision, deciding again when another
// writer got in between, and adopts the result at once.
func (r *Registry) change(ctx context.Context, clientID string, who Actor,
	decide func(cur ClientEntry, found bool, now time.Time) (*domain.Client, string, error)) (ClientEntry, error) {
	if err := domain.ValidateName("client_id", clientID); err != nil {
		return ClientEntry{}, err
	}
	if err := who.validate(); err != nil {
		return ClientEntry{}, err
	}
	key := clientKey(clientID)
	for range changeAttempts {
		cur, found, err := r.read(ctx, clientID)
		if err != nil {
			return ClientEntry{}, err
		}
		now := r.now().UTC()
		next, action, err := decide(cur, found, now)
		if err != nil {
			return ClientEntry{}, err
		}
		entry := ClientEntry{Removed: next == nil, Change: ClientChange{Action: action, At: now, Actor: who}}
		if next != nil {
			entry.Client = *next
		}
		raw, err := encodeClientEntry(entry)
		if err != nil {
			return ClientEntry{}, err
		}
		if found {
			entry.Revision, err = r.kv.Update(ctx, key, raw, cur.Revision)
		} else {
			entry.Revision, err = r.kv.Create(ctx, key, raw)
		}
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			continue
		}
		if err != nil {
			return ClientEntry{}, registryUnavailable("write the client", err)
		}
		r.adopt(clientID, entry)
		if r.OnChange != nil {
			r.OnChange(action)
		}
		return entry, nil
	}
	return ClientEntry{}, &domain.Error{Code: domain.EUnavailable, Message: "the client kept changing underneath, retry", RetryAfterMs: 1000}
}

// read returns the stored entry of clientID; found is false if there is
// none or it was deleted in the bucket.
func (r *Registry) read(ctx context.Context, clientID string) (ClientEntry, bool, error) {
	e, err := r.kv.Get(ctx, clientKey(clientID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ClientEntry{}, false, nil
	}
	if err != nil {
		return ClientEntry{}, false, registryUnavailable("read the client", err)
	}
	_, entry, err := decodeClientEntry(e)
	return entry, err == nil, err
}

func (a Actor) validate() error {
	if a.By == "" && a.NATSUser == "" {
		return domain.Errorf(domain.EInvalidRequest, "by is required: name who makes this change")
	}
	for _, f := range []struct{ name, value string }{{"by", a.By}, {"nats_user", a.NATSUser}} {
		if f.value != "" {
			if err := domain.ValidateName(f.name, f.value); err != nil {
				return err
			}
		}
	}
	return nil
}

// clientKey is the KV key of a client: client ids may hold any printable
// character, keys only a few, so the id is base64url-encoded.
func clientKey(clientID string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(clientID))
}

func notRegistered(clientID string) error {
	return domain.Errorf(domain.ENotFound, "client %q is not registered", truncateID(clientID))
}

func clientChangedSince(clientID string, want, now uint64) error {
	return domain.Errorf(domain.EInvalidRequest, "client %q is at revision %d, not %d; look again (tokenctl clients show)", truncateID(clientID), now, want)
}

func registryUnavailable(what string, err error) error {
	return fmt.Errorf("%w: %w", &domain.Error{Code: domain.EUnavailable, Message: "could not " + what + ", retry", RetryAfterMs: 1000}, err)
}

// truncateID keeps error messages short.
func truncateID(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// storedClient is the JSON of an entry of TOKENS_CLIENTS. Secrets are
// stored as their SHA-256 only.
type storedClient struct {
	Client *clientJSON  `json:"client"` // null: removed by this change
	Change ClientChange `json:"change"`
}

type clientJSON struct {
	ID                 string          `json:"client_id"`
	Type               string          `json:"type"`
	AuthMethod         string          `json:"auth_method"`
	Secrets            []secretJSON    `json:"secrets,omitempty"`
	JWKS               json.RawMessage `json:"jwks,omitempty"`
	Scopes             []string        `json:"scopes"`
	Audiences          []string        `json:"audiences"`
	Resources          []string        `json:"resources,omitempty"`    // absent in entries written before it existed: none
	SSFReceiver        string          `json:"ssf_receiver,omitempty"` // absent: not a receiver (and in entries written before receivers existed)
	AccessTTL          durationText    `json:"access_ttl"`
	RefreshIdleTTL     durationText    `json:"refresh_idle_ttl"`
	RefreshAbsoluteTTL durationText    `json:"refresh_absolute_ttl"`
	ReuseInterval      durationText    `json:"reuse_interval"`
	OnReplay           string          `json:"on_replay"`
	DPoPBound          bool            `json:"dpop_bound_access_tokens,omitempty"`
	DPoPRequireNonce   bool            `json:"dpop_require_nonce,omitempty"`
	CreatedAt          time.Time       `json:"created_at"`
	UpdatedAt          time.Time       `json:"updated_at"`
}

type secretJSON struct {
	SHA256    string    `json:"sha256"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

// durationText stores a duration in Go syntax ("5m0s"), readable in
// `nats kv history`.
type durationText time.Duration

func (d durationText) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

func (d *durationText) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = durationText(v)
	return err
}

func encodeClientEntry(e ClientEntry) ([]byte, error) {
	s := storedClient{Change: e.Change}
	if !e.Removed {
		c := e.Client
		j := &clientJSON{ID: c.ID, Type: string(c.Type), AuthMethod: string(c.AuthMethod), JWKS: c.JWKS,
			Scopes: c.Scopes, Audiences: c.Audiences, Resources: c.Resources, SSFReceiver: string(c.Receiver), AccessTTL: durationText(c.AccessTTL),
			RefreshIdleTTL: durationText(c.RefreshIdleTTL), RefreshAbsoluteTTL: durationText(c.RefreshAbsoluteTTL),
			ReuseInterval: durationText(c.ReuseInterval), OnReplay: string(c.OnReplay), DPoPBound: c.DPoPBound, DPoPRequireNonce: c.DPoPRequireNonce,
			CreatedAt: c.CreatedAt, UpdatedAt: c.UpdatedAt}
		for _, sec := range c.Secrets {
			j.Secrets = append(j.Secrets, secretJSON{SHA256: sec.Hash, CreatedAt: sec.CreatedAt, ExpiresAt: sec.ExpiresAt})
		}
		s.Client = j
	}
	return json.Marshal(s)
}

// decodeClientEntry reads a bucket entry: the client id its key names, and
// the entry. A deletion in the bucket reads as a removal.
func decodeClientEntry(e jetstream.KeyValueEntry) (string, ClientEntry, error) {
	raw, err := base64.RawURLEncoding.DecodeString(e.Key())
	if err != nil {
		return "", ClientEntry{}, fmt.Errorf("kv %s: key %q is not a client id", Bucket, e.Key())
	}
	id := string(raw)
	out := ClientEntry{Revision: e.Revision()}
	if e.Operation() != jetstream.KeyValuePut {
		out.Removed, out.Change = true, ClientChange{Action: ClientDeleted, At: e.Created().UTC()}
		return id, out, nil
	}
	var s storedClient
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		return id, ClientEntry{}, fmt.Errorf("kv %s: client %q revision %d is unreadable: %w", Bucket, truncateID(id), e.Revision(), err)
	}
	out.Change = s.Change
	if s.Client == nil {
		out.Removed = true
		return id, out, nil
	}
	j := s.Client
	out.Client = domain.Client{ID: j.ID, Type: domain.ClientType(j.Type), AuthMethod: domain.AuthMethod(j.AuthMethod), JWKS: j.JWKS,
		Scopes: j.Scopes, Audiences: j.Audiences, Resources: j.Resources, Receiver: domain.ReceiverRole(j.SSFReceiver), AccessTTL: time.Duration(j.AccessTTL), RefreshIdleTTL: time.Duration(j.RefreshIdleTTL),
		RefreshAbsoluteTTL: time.Duration(j.RefreshAbsoluteTTL), ReuseInterval: time.Duration(j.ReuseInterval),
		OnReplay: domain.ReplayAction(j.OnReplay), DPoPBound: j.DPoPBound, DPoPRequireNonce: j.DPoPRequireNonce,
		CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt}
	for _, sec := range j.Secrets {
		out.Client.Secrets = append(out.Client.Secrets, domain.ClientSecret{Hash: sec.SHA256, CreatedAt: sec.CreatedAt, ExpiresAt: sec.ExpiresAt})
	}
	if out.Client.ID != id {
		return id, ClientEntry{}, fmt.Errorf("kv %s: entry %q holds client %q", Bucket, truncateID(id), truncateID(out.Client.ID))
	}
	if err := out.Client.Validate(); err != nil {
		// %v: a stored client that fails validation is a server error, not
		// the caller's invalid_request.
		return id, ClientEntry{}, fmt.Errorf("kv %s: client %q revision %d is invalid: %v", Bucket, truncateID(id), e.Revision(), err)
	}
	return id, out, nil
}
