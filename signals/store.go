package signals

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

// Bucket is the KV bucket of SSF streams, one entry per stream (key: the
// stream id), followed by every instance.
const Bucket = "TOKENS_SSF_STREAMS"

// streamsHistory is how many revisions of each stream the bucket keeps,
// for an operator looking back at a receiver's changes.
const streamsHistory = 8

// changeAttempts bounds the compare-and-set rounds of one change made
// without an expected revision.
const changeAttempts = 5

// Errors of the store, in the chain of a *domain.Error with the code the
// API answers with (errors.Is finds them).
var (
	// ErrNotFound: no stream has this id (not_found; SSF: 404).
	ErrNotFound = errors.New("no such stream")
	// ErrRevisionChanged: the stream is no longer at the revision the
	// change expected (invalid_request).
	ErrRevisionChanged = errors.New("the stream changed since it was read")
	// ErrTooManyStreams: the receiver has MaxStreamsPerReceiver streams
	// (invalid_request; SSF: 409).
	ErrTooManyStreams = errors.New("too many streams")
)

// StreamChange is a change of the bucket, as every instance sees it.
type StreamChange struct {
	// Stream is the stream as changed; for a deletion, as it was.
	Stream Stream
	// Previous is the stream before the change, nil if this instance did
	// not know it (a new stream, or one present when it started).
	Previous *Stream
	// Deleted says the stream was deleted.
	Deleted bool
}

// Options configure a Store.
type Options struct {
	Replicas int // like the TOKENS stream's
	Log      *slog.Logger
	// OnChange, if set, is called with every change of the bucket, in
	// order, the streams present at Open first (Previous nil): how the
	// delivery workers learn of streams created, changed and deleted on
	// any instance. It runs on the store's one watcher goroutine: it must
	// not block, nor call the store's writing methods.
	OnChange func(StreamChange)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Keys seal the streams' delivery secrets (seal.go): the keys in use
	// as the store opens; UseKeys gives it each later revision. Without
	// keys, no stream with a delivery secret can be stored.
	Keys SealingKeys
	// Outbox stores the ssf.stream_updated events of the status changes
	// the receiver did not ask for (ChangeStatus, and a stream paused for
	// a lost secret).
	Outbox Outbox
	// RetryEvery is how soon the store tends the streams' secrets again
	// after it failed to (tend.go); default 10 s.
	RetryEvery time.Duration
}

// Outbox stores deployment events (events.Store.AppendDeployment).
type Outbox interface {
	AppendDeployment(context.Context, events.DeploymentEvent) (uint64, error)
}

// Store keeps SSF streams in TOKENS_SSF_STREAMS. Every instance follows
// the whole bucket in memory (Lookup, Streams, OnChange), its own changes
// included, as the watcher delivers them; Get and List read the bucket
// itself, so they see a change made on any instance the moment it is
// acknowledged. Changes are compare-and-set on the entry's revision.
//
// The store does not check who may do what: the API checks that a stream
// is the calling receiver's (Stream.Receiver) before changing it.
type Store struct {
	js       jetstream.JetStream
	kv       jetstream.KeyValue
	log      *slog.Logger
	now      func() time.Time
	onChange func(StreamChange)
	watcher  jetstream.KeyWatcher
	outbox   Outbox

	streams atomic.Pointer[map[string]Stream] // written by the watcher only
	keys    atomic.Pointer[SealingKeys]

	tend       chan struct{} // wakes the tending of secrets (tend.go)
	retryEvery time.Duration
	stopTend   context.CancelFunc
	tending    sync.WaitGroup
}

// Open creates or opens TOKENS_SSF_STREAMS, loads every stream (telling
// OnChange of each) and follows the bucket until Stop.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "tokend SSF streams (delivery secrets sealed under the MAC keys: tokend's user only)",
		History:     streamsHistory,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	s := &Store{js: js, kv: kv, log: cmp.Or(o.Log, slog.New(slog.DiscardHandler)), now: o.Now, onChange: o.OnChange, outbox: o.Outbox,
		tend: make(chan struct{}, 1), retryEvery: cmp.Or(o.RetryEvery, 10*time.Second)}
	if s.now == nil {
		s.now = time.Now
	}
	if o.Keys != nil {
		s.keys.Store(&o.Keys)
	}
	s.streams.Store(&map[string]Stream{})
	if s.watcher, err = events.FollowBucket(ctx, kv, s.apply, func() {}); err != nil {
		return nil, fmt.Errorf("kv %s: watch: %w", Bucket, err)
	}
	tendCtx, stop := context.WithCancel(context.Background())
	s.stopTend = stop
	s.tending.Go(func() { s.tendLoop(tendCtx) })
	return s, nil
}

// Stop stops following the bucket and tending the secrets.
func (s *Store) Stop() {
	s.watcher.Stop()
	s.stopTend()
	s.tending.Wait()
}

// UseKeys makes k the keys that seal delivery secrets from now on, and
// has the store seal again, under k's current key, every secret sealed
// under another key that k still holds (compare-and-set: one instance
// does each), and pause the streams whose secret is lost (tend.go). Call
// it with every keyset revision, and when retired keys expire
// (keys.Keyring.OnChange); it does not block.
func (s *Store) UseKeys(k SealingKeys) {
	s.keys.Store(&k)
	s.wakeTending()
}

// sealingKeys returns the keys in use, nil if there are none.
func (s *Store) sealingKeys() SealingKeys {
	if k := s.keys.Load(); k != nil {
		return *k
	}
	return nil
}

// apply follows one change of the bucket.
func (s *Store) apply(e jetstream.KeyValueEntry) {
	var change StreamChange
	if e.Operation() == jetstream.KeyValuePut {
		st, err := decodeStream(e)
		if err != nil {
			// Deliver nothing rather than to a configuration its receiver
			// replaced.
			s.log.Error("SSF stream entry unusable, the stream is dropped", "key", e.Key(), "revision", e.Revision(), "err", err)
		} else {
			change.Stream = st
		}
	}
	cur := *s.streams.Load()
	prev, known := cur[e.Key()]
	if known && prev.Revision >= e.Revision() {
		return
	}
	next := maps.Clone(cur)
	if change.Stream.ID == "" {
		delete(next, e.Key())
		change = StreamChange{Stream: prev, Deleted: true}
	} else {
		next[e.Key()] = change.Stream
	}
	s.streams.Store(&next)
	if known {
		change.Previous = &prev
	}
	if change.Deleted && !known {
		return
	}
	if !change.Deleted && needsTending(change.Stream, s.sealingKeys()) {
		s.wakeTending()
	}
	if s.onChange != nil {
		s.onChange(change)
	}
}

// Lookup returns stream id as this instance last saw it, from memory.
func (s *Store) Lookup(id string) (Stream, bool) {
	st, ok := (*s.streams.Load())[id]
	return st, ok
}

// Streams returns every stream as this instance last saw it, from memory,
// by id.
func (s *Store) Streams() []Stream {
	m := *s.streams.Load()
	return slices.SortedFunc(maps.Values(m), func(a, b Stream) int { return cmp.Compare(a.ID, b.ID) })
}

// NewStream is what a stream is created from.
type NewStream struct {
	// Receiver is the client id of the receiver creating the stream;
	// empty for an operator's webhook (then CreatedBy names the operator).
	Receiver  string
	CreatedBy string
	// Audience is the stream's aud (at most MaxAudiences values); empty:
	// the receiver's client id (for a webhook, its endpoint_url).
	Audience []string
	// Request holds the receiver-supplied fields; a stream without a
	// delivery is polled (SSF 1.0 section 8.1.1.1).
	Request StreamRequest
	// Clients are, for a webhook, the clients whose events it gets (none:
	// every event; see WebhookSees).
	Clients []string
	// WebhookSecret is, for a webhook, its signing secret
	// (ValidWebhookSecret); the store seals it.
	WebhookSecret string
}

// Create stores a new, enabled stream with a fresh id and returns it.
// Errors are invalid_request (bad fields: see Stream.Patch), with
// ErrTooManyStreams past MaxStreamsPerReceiver, or temporarily_unavailable.
func (s *Store) Create(ctx context.Context, n NewStream) (Stream, error) {
	now := s.now().UTC()
	st := Stream{ID: newStreamID(), Receiver: n.Receiver, CreatedBy: n.CreatedBy, Audience: n.Audience,
		Status: StatusEnabled, CreatedAt: now, UpdatedAt: now}
	webhook := n.Receiver == "" && n.Request.Delivery != nil && n.Request.Delivery.Method == DeliveryWebhook
	switch {
	case n.Receiver != "":
		if err := domain.ValidateName("receiver", n.Receiver); err != nil {
			return Stream{}, err
		}
		if n.Clients != nil || n.WebhookSecret != "" {
			return Stream{}, domain.Errorf(domain.EInvalidRequest, "a receiver's stream names no clients and has no webhook secret")
		}
	default:
		if err := domain.ValidateName("created_by", n.CreatedBy); err != nil {
			return Stream{}, err
		}
	}
	var err error
	if st.Clients, err = validClients(n.Clients); err != nil {
		return Stream{}, err
	}
	req := n.Request
	if webhook {
		if err := ValidWebhookSecret(n.WebhookSecret); err != nil {
			return Stream{}, err
		}
		d := *req.Delivery
		d.SecretRef = newSecretRef()
		req.Delivery = &d
		sealed, err := seal(s.sealingKeys(), st.ID, webhookField(d.SecretRef), n.WebhookSecret)
		if err != nil {
			return Stream{}, err
		}
		st.Secrets.Webhook = []WebhookSecret{{Ref: d.SecretRef, CreatedAt: now, Sealed: sealed}}
	}
	if err := st.Patch(req); err != nil {
		return Stream{}, err
	}
	if err := s.sealPlain(&st); err != nil {
		return Stream{}, err
	}
	if len(st.Audience) == 0 {
		st.Audience = []string{cmp.Or(n.Receiver, st.Delivery.EndpointURL)}
	}
	if err := validAudience(st.Audience); err != nil {
		return Stream{}, err
	}
	if n.Receiver != "" {
		all, err := s.ListAll(ctx)
		if err != nil {
			return Stream{}, err
		}
		if owned := countFunc(all, func(o Stream) bool { return o.Receiver == n.Receiver }); owned >= MaxStreamsPerReceiver {
			return Stream{}, fmt.Errorf("%w: %w", domain.Errorf(domain.EInvalidRequest,
				"a receiver has at most %d streams: delete one first", MaxStreamsPerReceiver), ErrTooManyStreams)
		}
	}
	data, err := json.Marshal(st)
	if err != nil {
		return Stream{}, err
	}
	if st.Revision, err = s.kv.Create(ctx, st.ID, data); err != nil {
		return Stream{}, unavailable("create the stream", err)
	}
	return st, nil
}

// Get reads stream id from the bucket: ErrNotFound (not_found) if there
// is none.
func (s *Store) Get(ctx context.Context, id string) (Stream, error) {
	if !validStreamID(id) {
		return Stream{}, notFound()
	}
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Stream{}, notFound()
	}
	if err != nil {
		return Stream{}, unavailable("read the stream", err)
	}
	return decodeStream(e)
}

// List reads receiver's streams from the bucket, oldest first.
func (s *Store) List(ctx context.Context, receiver string) ([]Stream, error) {
	all, err := s.ListAll(ctx)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(st Stream) bool { return st.Receiver != receiver }), nil
}

// ListAll reads every stream from the bucket, webhooks included, oldest
// first.
func (s *Store) ListAll(ctx context.Context) ([]Stream, error) {
	w, err := s.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, unavailable("list the streams", err)
	}
	defer w.Stop()
	out := []Stream{}
	for {
		select {
		case <-ctx.Done():
			return nil, unavailable("list the streams", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, unavailable("list the streams", errors.New("watch ended"))
			}
			if e == nil {
				slices.SortFunc(out, func(a, b Stream) int {
					return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
				})
				return out, nil
			}
			st, err := decodeStream(e)
			if err != nil {
				s.log.Error("SSF stream entry unusable, left out", "key", e.Key(), "revision", e.Revision(), "err", err)
				continue
			}
			out = append(out, st)
		}
	}
}

// Update changes stream id with change, at revision ifRevision if not 0
// (else whatever revision it is at, deciding again if another change gets
// in between), and returns it as stored. change edits its copy of the
// stream with Stream's methods (Patch, Replace, SetStatus, AddSubject,
// RemoveSubject) and returns false to store nothing. The id, receiver,
// creation time and aud (SSF: it cannot be updated) stay as they were.
// Errors: ErrNotFound, ErrRevisionChanged, change's, or
// temporarily_unavailable.
func (s *Store) Update(ctx context.Context, id string, ifRevision uint64, change func(*Stream) (bool, error)) (Stream, error) {
	for range changeAttempts {
		cur, err := s.Get(ctx, id)
		if err != nil {
			return Stream{}, err
		}
		if ifRevision != 0 && ifRevision != cur.Revision {
			return Stream{}, revisionChanged(id, ifRevision, cur.Revision)
		}
		next := cur
		changed, err := change(&next)
		if err != nil || !changed {
			return cur, err
		}
		next.ID, next.Receiver, next.CreatedBy, next.CreatedAt, next.Audience = cur.ID, cur.Receiver, cur.CreatedBy, cur.CreatedAt, cur.Audience
		next.UpdatedAt = s.now().UTC()
		written, conflict, err := s.write(ctx, cur, next)
		switch {
		case conflict && ifRevision != 0:
			return Stream{}, revisionChanged(id, ifRevision, 0)
		case conflict:
			continue
		}
		return written, err
	}
	return Stream{}, keptChanging()
}

// write stores next in place of cur, compare-and-set on cur's revision,
// with its delivery secrets sealed and without the webhook secrets that
// stopped signing; conflict says another change got in first. In place of
// an entry an earlier version wrote with an authorization_header in the
// clear, it also drops that entry's history, which holds the secret.
func (s *Store) write(ctx context.Context, cur, next Stream) (_ Stream, conflict bool, _ error) {
	if err := s.sealPlain(&next); err != nil {
		return Stream{}, false, err
	}
	now := s.now()
	next.Secrets.Webhook = slices.DeleteFunc(slices.Clone(next.Secrets.Webhook), func(w WebhookSecret) bool { return !w.live(now) })
	data, err := json.Marshal(next)
	if err != nil {
		return Stream{}, false, err
	}
	if cur.plainAuthorization != "" {
		next.Revision, err = s.putRollup(ctx, next.ID, data, cur.Revision)
	} else {
		next.Revision, err = s.kv.Update(ctx, next.ID, data, cur.Revision)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return Stream{}, true, nil
	}
	if err != nil {
		return Stream{}, false, unavailable("write the stream", err)
	}
	return next, false, nil
}

// putRollup stores data as stream id's only revision, compare-and-set on
// revision rev: a KV put with a rollup, which drops the revisions before
// it from the bucket (as a purge does, but leaving the entry, so no
// instance sees the stream deleted).
func (s *Store) putRollup(ctx context.Context, id string, data []byte, rev uint64) (uint64, error) {
	m := nats.NewMsg("$KV." + Bucket + "." + id)
	m.Data = data
	m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	ack, err := s.js.PublishMsg(ctx, m)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return 0, jetstream.ErrKeyExists
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// sealPlain seals the authorization_header st holds in the clear (a
// request's, or an entry an earlier version wrote), leaving none.
func (s *Store) sealPlain(st *Stream) error {
	plain := cmp.Or(st.Delivery.AuthorizationHeader, st.plainAuthorization)
	st.Delivery.AuthorizationHeader, st.plainAuthorization = "", ""
	if plain == "" {
		return nil
	}
	sealed, err := seal(s.sealingKeys(), st.ID, fieldAuthorization, plain)
	if err != nil {
		return err
	}
	st.Secrets.Authorization = &sealed
	return nil
}

// SetStatus sets stream id's status and reason (Stream.SetStatus), at
// revision ifRevision if not 0, and says whether it changed, as its
// receiver asks. It records no stream-updated event: a change the
// receiver did not ask for is ChangeStatus's.
func (s *Store) SetStatus(ctx context.Context, id string, ifRevision uint64, status Status, reason string) (st Stream, changed bool, err error) {
	st, err = s.Update(ctx, id, ifRevision, func(st *Stream) (bool, error) {
		c, err := st.SetStatus(status, reason)
		changed = c
		return c, err
	})
	return st, changed && err == nil, err
}

// ChangeStatus sets stream id's status and reason (Stream.SetStatus) for
// someone other than its receiver (an operator, the delivery), and says
// whether it changed. It appends ssf.stream_updated first (SSF 1.0
// section 8.1.5: the transmitter tells the receiver of a status it did
// not ask for), so the receiver learns of a pause before it takes effect;
// if that append fails, nothing changes (temporarily_unavailable). The
// event's revision is the one the change starts from, which names the
// change: two instances making the same change append one event.
func (s *Store) ChangeStatus(ctx context.Context, id string, status Status, reason string) (Stream, bool, error) {
	for range changeAttempts {
		cur, err := s.Get(ctx, id)
		if err != nil {
			return Stream{}, false, err
		}
		next := cur
		changed, err := next.SetStatus(status, reason)
		if err != nil || !changed {
			return cur, false, err
		}
		if err := s.announce(ctx, cur, next); err != nil {
			return Stream{}, false, err
		}
		next.UpdatedAt = s.now().UTC()
		written, conflict, err := s.write(ctx, cur, next)
		if conflict {
			continue
		}
		return written, err == nil, err
	}
	return Stream{}, false, keptChanging()
}

// announce appends the ssf.stream_updated event of cur taking next's
// status.
func (s *Store) announce(ctx context.Context, cur, next Stream) error {
	if s.outbox == nil {
		return domain.Errorf(domain.EServerError, "stream updates cannot be announced: no outbox")
	}
	ev := events.StreamUpdatedEvent(cur.ID, string(next.Status), next.Reason, cur.Revision, s.now())
	if _, err := s.outbox.AppendDeployment(ctx, ev); err != nil {
		return unavailable("announce the stream's new status", err)
	}
	return nil
}

// RotateWebhookSecret gives webhook id the signing secret secret
// (ValidWebhookSecret), sealed, with a new SecretRef. Its previous
// secrets sign too for grace more (none past it, none if grace is 0):
// Standard Webhooks sends a signature of each. Errors: ErrNotFound,
// invalid_request (not a webhook, a bad secret or grace, too many
// secrets at once), temporarily_unavailable.
func (s *Store) RotateWebhookSecret(ctx context.Context, id, secret string, grace time.Duration) (Stream, error) {
	if err := ValidWebhookSecret(secret); err != nil {
		return Stream{}, err
	}
	if grace < 0 || grace > domain.MaxClientTTL {
		return Stream{}, domain.Errorf(domain.EInvalidRequest, "grace must be 0 or more, at most %v", domain.MaxClientTTL)
	}
	return s.Update(ctx, id, 0, func(st *Stream) (bool, error) {
		if st.Delivery.Method != DeliveryWebhook {
			return false, domain.Errorf(domain.EInvalidRequest, "stream %s is not a webhook", st.ID)
		}
		ref := newSecretRef()
		sealed, err := seal(s.sealingKeys(), st.ID, webhookField(ref), secret)
		if err != nil {
			return false, err
		}
		now := s.now().UTC()
		secrets := []WebhookSecret{{Ref: ref, CreatedAt: now, Sealed: sealed}}
		for _, w := range st.Secrets.Webhook {
			if !w.live(now) || grace == 0 {
				continue
			}
			if end := now.Add(grace); w.ExpiresAt.IsZero() || end.Before(w.ExpiresAt) {
				w.ExpiresAt = end
			}
			secrets = append(secrets, w)
		}
		if len(secrets) > MaxWebhookSecrets {
			return false, domain.Errorf(domain.EInvalidRequest, "the webhook would have %d secrets at once, at most %d: rotate with a shorter grace, or after the last grace period ends",
				len(secrets), MaxWebhookSecrets)
		}
		st.Secrets.Webhook, st.Delivery.SecretRef, st.Secrets.Lost = secrets, ref, false
		return true, nil
	})
}

// MaxWebhookSecrets bounds the secrets a webhook signs with at once (the
// current one and those in a rotation's overlap): each adds a signature
// to every request.
const MaxWebhookSecrets = 5

// DeliverySecrets opens st's delivery secrets, for the delivery only:
// never log or show them. Errors: ErrSecretLost (deliver nothing: the
// store pauses the stream), temporarily_unavailable (this instance has
// not loaded the keys the secret was sealed under yet: retry).
func (s *Store) DeliverySecrets(st Stream) (DeliverySecrets, error) {
	if st.Secrets.Lost {
		return DeliverySecrets{}, ErrSecretLost
	}
	k := s.sealingKeys()
	out := DeliverySecrets{Authorization: st.plainAuthorization}
	if a := st.Secrets.Authorization; a != nil && out.Authorization == "" {
		var err error
		if out.Authorization, err = open(k, *a, st.ID, fieldAuthorization); err != nil {
			return DeliverySecrets{}, err
		}
	}
	now := s.now()
	for _, w := range st.Secrets.Webhook {
		if !w.live(now) {
			continue
		}
		secret, err := open(k, w.Sealed, st.ID, webhookField(w.Ref))
		if err != nil {
			return DeliverySecrets{}, err
		}
		out.Webhook = append(out.Webhook, secret)
	}
	return out, nil
}

// AddSubject undoes the removal of subject from stream id
// (Stream.AddSubject).
func (s *Store) AddSubject(ctx context.Context, id string, subject Subject) (Stream, error) {
	return s.Update(ctx, id, 0, func(st *Stream) (bool, error) { return st.AddSubject(subject) })
}

// RemoveSubject stops the events about subject on stream id
// (Stream.RemoveSubject).
func (s *Store) RemoveSubject(ctx context.Context, id string, subject Subject) (Stream, error) {
	return s.Update(ctx, id, 0, func(st *Stream) (bool, error) { return st.RemoveSubject(subject) })
}

// Delete deletes stream id, at revision ifRevision if not 0. Its history
// stays in the bucket (the last streamsHistory revisions).
func (s *Store) Delete(ctx context.Context, id string, ifRevision uint64) error {
	cur, err := s.Get(ctx, id)
	if err != nil {
		return err
	}
	if ifRevision != 0 && ifRevision != cur.Revision {
		return revisionChanged(id, ifRevision, cur.Revision)
	}
	err = s.kv.Delete(ctx, id, jetstream.LastRevision(cur.Revision))
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return revisionChanged(id, cur.Revision, 0)
	}
	if err != nil {
		return unavailable("delete the stream", err)
	}
	return nil
}

func decodeStream(e jetstream.KeyValueEntry) (Stream, error) {
	var st Stream
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return Stream{}, fmt.Errorf("stream %s: %w", e.Key(), err)
	}
	if st.ID != e.Key() || !st.Status.Valid() {
		return Stream{}, fmt.Errorf("stream %s: entry names stream %q with status %q", e.Key(), st.ID, st.Status)
	}
	st.Revision = e.Revision()
	// An earlier version stored the header in the clear: held aside, never
	// shown, until a write seals it (tend.go does at once).
	st.plainAuthorization, st.Delivery.AuthorizationHeader = st.Delivery.AuthorizationHeader, ""
	// Derived again on every read: a stream that asked for every event
	// gets the types a later version adds.
	st.EventsDelivered = Delivered(st.EventsRequested)
	return st, nil
}

// newStreamID returns 128 random bits in hex: unreserved characters (SSF
// 1.0 section 8.1.1 asks for RFC 3986 section 2.3's), and one token of a
// NATS subject and of a consumer name, which the delivery builds from it.
func newStreamID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// newSecretRef returns the id of a new webhook secret: 64 random bits,
// enough to tell a webhook's secrets apart.
func newSecretRef() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ValidStreamID reports whether id is shaped like the stream ids tokend
// makes; any other is no stream's.
func ValidStreamID(id string) bool { return validStreamID(id) }

func validStreamID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func validAudience(aud []string) error {
	if len(aud) == 0 || len(aud) > MaxAudiences {
		return domain.Errorf(domain.EInvalidRequest, "a stream has 1 to %d audiences", MaxAudiences)
	}
	for _, a := range aud {
		if err := domain.ValidateName("aud", a); err != nil {
			return err
		}
	}
	return nil
}

func countFunc[T any](s []T, f func(T) bool) int {
	n := 0
	for _, v := range s {
		if f(v) {
			n++
		}
	}
	return n
}

func notFound() error {
	return fmt.Errorf("%w: %w", domain.Errorf(domain.ENotFound, "no such stream"), ErrNotFound)
}

func revisionChanged(id string, want, now uint64) error {
	msg := fmt.Sprintf("stream %s is no longer at revision %d; read it again", id, want)
	if now != 0 {
		msg = fmt.Sprintf("stream %s is at revision %d, not %d; read it again", id, now, want)
	}
	return fmt.Errorf("%w: %w", &domain.Error{Code: domain.EInvalidRequest, Message: msg}, ErrRevisionChanged)
}

func keptChanging() error {
	return &domain.Error{Code: domain.EUnavailable, Message: "the stream kept changing underneath, retry", RetryAfterMs: 1000}
}

func unavailable(what string, err error) error {
	return fmt.Errorf("%w: %w", &domain.Error{Code: domain.EUnavailable, Message: "could not " + what + ", retry", RetryAfterMs: 1000}, err)
}
