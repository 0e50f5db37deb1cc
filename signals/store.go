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
	"sync/atomic"
	"time"

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
	kv       jetstream.KeyValue
	log      *slog.Logger
	now      func() time.Time
	onChange func(StreamChange)
	watcher  jetstream.KeyWatcher

	streams atomic.Pointer[map[string]Stream] // written by the watcher only
}

// Open creates or opens TOKENS_SSF_STREAMS, loads every stream (telling
// OnChange of each) and follows the bucket until Stop.
func Open(ctx context.Context, js jetstream.JetStream, o Options) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "tokend SSF streams (receivers' push authorization headers included: tokend's user only)",
		History:     streamsHistory,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", Bucket, err)
	}
	s := &Store{kv: kv, log: cmp.Or(o.Log, slog.New(slog.DiscardHandler)), now: o.Now, onChange: o.OnChange}
	if s.now == nil {
		s.now = time.Now
	}
	s.streams.Store(&map[string]Stream{})
	if s.watcher, err = events.FollowBucket(ctx, kv, s.apply, func() {}); err != nil {
		return nil, fmt.Errorf("kv %s: watch: %w", Bucket, err)
	}
	return s, nil
}

// Stop stops following the bucket.
func (s *Store) Stop() { s.watcher.Stop() }

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
}

// Create stores a new, enabled stream with a fresh id and returns it.
// Errors are invalid_request (bad fields: see Stream.Patch), with
// ErrTooManyStreams past MaxStreamsPerReceiver, or temporarily_unavailable.
func (s *Store) Create(ctx context.Context, n NewStream) (Stream, error) {
	now := s.now().UTC()
	st := Stream{ID: newStreamID(), Receiver: n.Receiver, CreatedBy: n.CreatedBy, Audience: n.Audience,
		Status: StatusEnabled, CreatedAt: now, UpdatedAt: now}
	switch {
	case n.Receiver != "":
		if err := domain.ValidateName("receiver", n.Receiver); err != nil {
			return Stream{}, err
		}
	default:
		if err := domain.ValidateName("created_by", n.CreatedBy); err != nil {
			return Stream{}, err
		}
	}
	if err := st.Patch(n.Request); err != nil {
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
		data, err := json.Marshal(next)
		if err != nil {
			return Stream{}, err
		}
		next.Revision, err = s.kv.Update(ctx, id, data, cur.Revision)
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			if ifRevision != 0 {
				return Stream{}, revisionChanged(id, ifRevision, 0)
			}
			continue
		}
		if err != nil {
			return Stream{}, unavailable("write the stream", err)
		}
		return next, nil
	}
	return Stream{}, &domain.Error{Code: domain.EUnavailable, Message: "the stream kept changing underneath, retry", RetryAfterMs: 1000}
}

// SetStatus sets stream id's status and reason (Stream.SetStatus), at
// revision ifRevision if not 0, and says whether it changed. The store
// records no stream-updated event: whoever changes a stream's status
// without its receiver asking appends events.StreamUpdatedEvent (SSF 1.0
// section 8.1.5 requires it), before pausing or disabling.
func (s *Store) SetStatus(ctx context.Context, id string, ifRevision uint64, status Status, reason string) (st Stream, changed bool, err error) {
	st, err = s.Update(ctx, id, ifRevision, func(st *Stream) (bool, error) {
		c, err := st.SetStatus(status, reason)
		changed = c
		return c, err
	})
	return st, changed && err == nil, err
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

func unavailable(what string, err error) error {
	return fmt.Errorf("%w: %w", &domain.Error{Code: domain.EUnavailable, Message: "could not " + what + ", retry", RetryAfterMs: 1000}, err)
}
