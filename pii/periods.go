package pii

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/nats-io/nats.go/jetstream"
)

// PeriodsBucket holds the period keys: data keys for personal parts kept
// only for a while (e.g. IPs for 30 days), one per period, each expiring
// on its own schedule whatever becomes of the subject.
const PeriodsBucket = "TOKENS_PII_PERIODS"

// periodsSubject is the prefix of the subjects of PeriodsBucket's stream.
const periodsSubject = "$KV." + PeriodsBucket + "."

// periodRefPrefix starts a period key's ref: "t:", the key's expiry in
// unix seconds (its bucket key), "." and the revision it was created at,
// e.g. "t:1769904000.12". A subject key's ref (base64url, ".", revision)
// never holds a ':', so IsPeriodRef tells which store opens a Sealed.
//
// A key is named by its expiry rather than its period's index so that
// its lifetime is fixed when it is made: an index means another time once
// the retention (and with it the period) changes, and a longer retention
// would then revive old keys.
const periodRefPrefix = "t:"

// The period length is a tenth of the retention, within these bounds:
// keys are made (and kept, about ten at a time) no more often than every
// second and no less often than daily, so that a part outlives its
// retention by at most a tenth of it or a day.
const (
	minPeriod = time.Second
	maxPeriod = 24 * time.Hour
)

// minServerTTLGrace is the least time between a period key's expiry and
// the server's removal of its message (see Current).
const minServerTTLGrace = time.Minute

// IsPeriodRef reports whether ref (DataKey.Ref, Sealed.K) names a period
// key (Periods.KeyFor) rather than a subject's key (Store.KeyFor).
func IsPeriodRef(ref string) bool { return strings.HasPrefix(ref, periodRefPrefix) }

// PeriodConfig sizes Periods.
type PeriodConfig struct {
	// Replicas of the bucket: those of the event stream.
	Replicas int
	// Retention is how long a sealed part stays readable: at least
	// Retention after it was sealed, at most Retention and a period (a
	// tenth of Retention, from a second to a day). Whole seconds, at
	// least one: the server's message TTLs count seconds.
	Retention time.Duration
	// CacheSize bounds the period keys kept in memory; about ten are in
	// use at a time.
	CacheSize int
	// Now is the clock (time.Now if nil). Instances' clocks should agree
	// within much less than a period: a key expires by the clock of the
	// instance that reads or sweeps it.
	Now func() time.Time
	// Log receives the errors of Run's sweeps (none if nil).
	Log *slog.Logger
}

// Periods keeps the period keys: in PeriodsBucket, wrapped by the KEK, and
// in a bounded cache on each instance. A period key opens what it sealed
// until the key's expiry, (period index + 1) × period + Retention, which
// every reader computes from the key's name: an expired key is refused
// even while the server still holds it or an instance has it cached.
type Periods struct {
	keys      *Keys
	kv        jetstream.KeyValue
	stream    jetstream.Stream
	retention time.Duration
	period    time.Duration
	now       func() time.Time
	log       *slog.Logger
	cache     *lru.Cache[string, DataKey] // by bucket key
}

// OpenPeriods creates or opens PeriodsBucket. Its stream is created here,
// as the subject keys' is (OpenStore), so that Sweep may delete messages.
func OpenPeriods(ctx context.Context, js jetstream.JetStream, keys *Keys, cfg PeriodConfig) (*Periods, error) {
	if cfg.Retention < time.Second {
		return nil, fmt.Errorf("pii: retention %v is too short: at least a second", cfg.Retention)
	}
	if cfg.Retention%time.Second != 0 {
		return nil, fmt.Errorf("pii: retention %v: whole seconds only", cfg.Retention)
	}
	stream, err := js.CreateOrUpdateStream(ctx, streamConfig(PeriodsBucket, "tokend data keys of personal data kept for a period, wrapped", cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", PeriodsBucket, err)
	}
	kv, err := js.KeyValue(ctx, PeriodsBucket)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", PeriodsBucket, err)
	}
	cache, err := lru.New[string, DataKey](max(cfg.CacheSize, 1))
	if err != nil {
		return nil, err
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Periods{
		keys:      keys,
		kv:        kv,
		stream:    stream,
		retention: cfg.Retention,
		// Truncated to whole seconds, so that every expiry is one too.
		period: min(max(cfg.Retention/10, minPeriod), maxPeriod).Truncate(time.Second),
		now:    now,
		log:    cmp.Or(cfg.Log, slog.New(slog.DiscardHandler)),
		cache:  cache,
	}, nil
}

// Period returns the period length: a new key is made every period.
func (p *Periods) Period() time.Duration { return p.period }

// Current returns the key of the current period, created on first use
// (of two instances creating it at once, both get the one written first).
//
// The server removes the key's message by itself (a per-message TTL), but
// only a while after the key expired: a TTL removal does not overwrite
// the message on disk (see Sweep), and once it has happened a sweep can no
// longer overwrite it. So the sweeps, every half period, come first, and
// the TTL, max(period, a minute) after the expiry, is the backstop for a
// deployment where no instance sweeps any more.
func (p *Periods) Current(ctx context.Context) (DataKey, error) {
	now := p.now()
	expiry := time.Unix(0, (now.UnixNano()/int64(p.period)+1)*int64(p.period)).Add(p.retention)
	key := strconv.FormatInt(expiry.Unix(), 10)
	ttl := expiry.Sub(now) + max(p.period, minServerTTLGrace)
	ttl = (ttl + time.Second - 1).Truncate(time.Second) // the server counts whole seconds
	// Three rounds: a create that lost the race reads the winner's key,
	// unless a sweep (by an instance whose clock is far ahead) removed it
	// meanwhile; more means something is wrong.
	for range 3 {
		if k, ok := p.cache.Get(key); ok {
			return k, nil
		}
		k, err := p.fetch(ctx, key)
		if !errors.Is(err, ErrNoKey) {
			return k, err
		}
		if k, err := p.create(ctx, key, ttl); !errors.Is(err, jetstream.ErrKeyExists) {
			return k, err
		}
	}
	return DataKey{}, fmt.Errorf("kv %s: the current period's key keeps changing", PeriodsBucket)
}

// KeyFor returns the period key named by ref (DataKey.Ref, Sealed.K), or
// ErrNoKey once it has expired: what it sealed is then unreadable.
func (p *Periods) KeyFor(ctx context.Context, ref string) (DataKey, error) {
	key, ok := strings.CutPrefix(ref, periodRefPrefix)
	if !ok {
		return DataKey{}, ErrNoKey
	}
	key, rev, ok := strings.Cut(key, ".")
	expiry, valid := periodExpiry(key)
	if !ok || !valid || rev == "" {
		return DataKey{}, ErrNoKey
	}
	if !p.now().Before(expiry) {
		return DataKey{}, ErrNoKey
	}
	if k, ok := p.cache.Get(key); ok && k.Ref == ref {
		return k, nil
	}
	k, err := p.fetch(ctx, key)
	if err != nil {
		return DataKey{}, err
	}
	if k.Ref != ref { // swept and made again, by instances whose clocks disagree
		return DataKey{}, ErrNoKey
	}
	return k, nil
}

// fetch reads the key under key from the bucket and caches it.
func (p *Periods) fetch(ctx context.Context, key string) (DataKey, error) {
	e, err := p.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return DataKey{}, ErrNoKey
	}
	if err != nil {
		return DataKey{}, fmt.Errorf("kv %s: %w", PeriodsBucket, err)
	}
	secret, err := p.keys.unwrapKey(e.Value(), periodRefPrefix+key)
	if err != nil {
		// Most likely another deployment key than the one that wrapped it.
		return DataKey{}, fmt.Errorf("kv %s: entry %s cannot be unwrapped: is this the deployment key it was written with?", PeriodsBucket, key)
	}
	k, err := dataKey(periodRefPrefix+key, e.Revision(), secret)
	if err != nil {
		return DataKey{}, err
	}
	p.cache.Add(key, k)
	return k, nil
}

// create makes and stores a key under key, removed by the server after
// ttl, or reports jetstream.ErrKeyExists if another one was stored first.
func (p *Periods) create(ctx context.Context, key string, ttl time.Duration) (DataKey, error) {
	secret, wrapped, err := p.keys.newWrappedKey(periodRefPrefix + key)
	if err != nil {
		return DataKey{}, err
	}
	rev, err := p.kv.Create(ctx, key, wrapped, jetstream.KeyTTL(ttl))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return DataKey{}, err
	}
	if err != nil {
		return DataKey{}, fmt.Errorf("kv %s: %w", PeriodsBucket, err)
	}
	k, err := dataKey(periodRefPrefix+key, rev, secret)
	if err != nil {
		return DataKey{}, err
	}
	p.cache.Add(key, k)
	return k, nil
}

// Sweep overwrites on disk (SecureDeleteMsg) the message of every period
// key past its expiry, and drops expired keys from this instance's cache.
//
// The server's own removal at the message's TTL would not do: in
// nats-server's file store (v2.15, filestore.go) expireMsgs removes a
// message whose TTL passed with fs.removeMsg(seq, secure=false, ...), which
// only marks the record deleted in its block (or, first in the block,
// moves the block's first sequence past it) and leaves its bytes in the
// block file until the block is compacted (never inline for the last
// block) or emptied; only the secure path (EraseMsg, mb.eraseMsg)
// overwrites the record with random bytes. (Under --js-key-file the store
// turns secure erasure off; the record stays, encrypted, until compaction.)
//
// Concurrent sweeps, on any number of instances, are harmless: a message
// another sweep removed first is skipped.
func (p *Periods) Sweep(ctx context.Context) error {
	now := p.now()
	for _, key := range p.cache.Keys() {
		if expiry, _ := periodExpiry(key); !now.Before(expiry) {
			p.cache.Remove(key)
		}
	}
	info, err := p.stream.Info(ctx, jetstream.WithSubjectFilter(periodsSubject+">"))
	if err != nil {
		return fmt.Errorf("kv %s: %w", PeriodsBucket, err)
	}
	var errs []error
	for subject := range info.State.Subjects {
		expiry, ok := periodExpiry(strings.TrimPrefix(subject, periodsSubject))
		if !ok || now.Before(expiry) {
			continue
		}
		msg, err := p.stream.GetLastMsgForSubject(ctx, subject)
		if err == nil {
			err = secureDelete(ctx, p.stream, msg.Sequence)
		}
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("kv %s: %w", PeriodsBucket, err)
	}
	return nil
}

// Run sweeps (Sweep) at once and every half period until ctx ends. Every
// instance runs it: a key is then overwritten within half a period after
// its expiry while any instance is up.
func (p *Periods) Run(ctx context.Context) {
	tick := time.NewTicker(p.period / 2)
	defer tick.Stop()
	for {
		if err := p.Sweep(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("pii: sweeping expired period keys", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// periodExpiry returns the expiry named by a period key's bucket key: unix
// seconds, written as Current writes them (a ref read from an event is
// input, and a key the KV API refuses must not reach it).
func periodExpiry(key string) (time.Time, bool) {
	secs, err := strconv.ParseInt(key, 10, 64)
	if err != nil || secs <= 0 || strconv.FormatInt(secs, 10) != key {
		return time.Time{}, false
	}
	return time.Unix(secs, 0), true
}
